/* Logging: the library prints nothing on stderr; a warning (a torn log tail dropped when a
 * durable database reopens) reaches the callback of laminar_set_log_callback, and nothing once
 * the callback is turned off. */
#include "common.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct received {
  pthread_mutex_t lock;
  int warnings;   /* LAMINAR_LOG_WARN messages with target "laminardb" */
  int others;     /* anything else */
  char last[4096];
} received;

static void on_log(void *user_data, laminar_log_level level, const char *target, const char *message) {
  received *r = (received *)user_data;
  pthread_mutex_lock(&r->lock);
  if (level == LAMINAR_LOG_WARN && strcmp(target, "laminardb") == 0) {
    r->warnings++;
    snprintf(r->last, sizeof r->last, "%s", message);
  } else {
    r->others++;
  }
  pthread_mutex_unlock(&r->lock);
}

static void remove_tree(const char *path) {
  char cmd[1200];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", path);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", path);
}

/* Creates a durable database in `dir` (a source, then close: a checkpoint) and appends a few
 * bytes of garbage to its newest log segment: the next open drops them with a warning. */
static void durable_with_a_torn_log_tail(const char *dir) {
  laminar_db *db = NULL;
  char wal[1100], newest[256] = "", seg[1400];
  DIR *d;
  struct dirent *e;
  int fd;
  const unsigned char garbage[7] = {0xab, 0xab, 0xab, 0xab, 0xab, 0xab, 0xab};
  CHECK_OK(laminar_db_open(dir, NULL, &db, &err));
  CHECK_OK(laminar_db_execute(db, "CREATE SOURCE IF NOT EXISTS s (k BIGINT NOT NULL)", NULL, &err));
  laminar_db_close(db);
  snprintf(wal, sizeof wal, "%s/wal", dir);
  d = opendir(wal);
  CHECK(d != NULL);
  while ((e = readdir(d)) != NULL) {
    if (e->d_name[0] != '.' && strcmp(e->d_name, newest) > 0) snprintf(newest, sizeof newest, "%s", e->d_name);
  }
  closedir(d);
  CHECK(newest[0] != '\0');
  snprintf(seg, sizeof seg, "%s/%s", wal, newest);
  fd = open(seg, O_WRONLY | O_APPEND);
  CHECK(fd >= 0);
  CHECK(write(fd, garbage, sizeof garbage) == (ssize_t)sizeof garbage);
  close(fd);
}

int main(void) {
  char dir[] = "/tmp/laminar-c-log-XXXXXX";
  char errfile[] = "/tmp/laminar-c-log-stderr-XXXXXX";
  received r;
  laminar_db *db = NULL;
  int saved_stderr, errfd;
  struct stat st;

  memset(&r, 0, sizeof r);
  pthread_mutex_init(&r.lock, NULL);
  CHECK(mkdtemp(dir) != NULL);
  errfd = mkstemp(errfile);
  CHECK(errfd >= 0);

  CHECK_FAILS(LAMINAR_INVALID_ARGUMENT, "LAMINAR_LOG_", laminar_set_log_callback(on_log, &r, 0, &err));
  CHECK_FAILS(LAMINAR_INVALID_ARGUMENT, "LAMINAR_LOG_", laminar_set_log_callback(on_log, &r, 6, &err));
  CHECK_OK(laminar_set_log_callback(on_log, &r, LAMINAR_LOG_WARN, &err));

  /* Everything the library does from here writes to stderr only if it prints: fd 2 goes to a
   * file, checked empty afterwards. */
  fflush(stderr);
  saved_stderr = dup(2);
  CHECK(saved_stderr >= 0 && dup2(errfd, 2) == 2);

  durable_with_a_torn_log_tail(dir);
  CHECK(r.warnings == 0);
  CHECK_OK(laminar_db_open(dir, NULL, &db, &err));
  laminar_db_close(db);

  /* Off: the same warning again reaches nobody. */
  CHECK_OK(laminar_set_log_callback(NULL, NULL, 0, &err));
  durable_with_a_torn_log_tail(dir);
  CHECK_OK(laminar_db_open(dir, NULL, &db, &err));
  laminar_db_close(db);

  fflush(stderr);
  CHECK(dup2(saved_stderr, 2) == 2);
  close(saved_stderr);
  CHECK(fstat(errfd, &st) == 0);
  if (st.st_size != 0) {
    char buf[2048];
    ssize_t n = pread(errfd, buf, sizeof buf - 1, 0);
    buf[n > 0 ? n : 0] = '\0';
    fprintf(stderr, "the library wrote %ld bytes to stderr:\n%s\n", (long)st.st_size, buf);
  }
  CHECK(st.st_size == 0);
  close(errfd);
  unlink(errfile);

  pthread_mutex_lock(&r.lock);
  if (r.warnings != 1 || !contains(r.last, "torn tail"))
    fprintf(stderr, "warnings %d, others %d, last: %s\n", r.warnings, r.others, r.last);
  CHECK(r.warnings == 1);
  CHECK(contains(r.last, "torn tail"));
  pthread_mutex_unlock(&r.lock);
  pthread_mutex_destroy(&r.lock);

  remove_tree(dir);
  DONE();
}

/* Statuses, error objects, versions, and NULL / invalid arguments to every function group. */
#include "common.h"

int main(void) {
  laminar_db *db = NULL;
  laminar_writer *w = (laminar_writer *)1; /* must be reset to NULL on failure */
  laminar_subscription *sub = (laminar_subscription *)1;
  laminar_error *err = NULL;
  struct ArrowArrayStream stream;
  struct ArrowSchema schema;
  struct ArrowArray array;
  int64_t n = 0;

  /* versions: header macros and library agree */
  CHECK(laminar_version_number() == LAMINAR_VERSION_NUMBER);
  {
    char expect[32];
    snprintf(expect, sizeof expect, "%d.%d.%d", LAMINAR_VERSION_MAJOR, LAMINAR_VERSION_MINOR, LAMINAR_VERSION_PATCH);
    CHECK(strcmp(laminar_version(), expect) == 0);
  }

  /* status names are static and stable */
  CHECK(strcmp(laminar_status_str(LAMINAR_OK), "OK") == 0);
  CHECK(strcmp(laminar_status_str(LAMINAR_NOT_FOUND), "NOT_FOUND") == 0);
  CHECK(strcmp(laminar_status_str(LAMINAR_INVALID_DATA), "INVALID_DATA") == 0);
  CHECK(strcmp(laminar_status_str(LAMINAR_CLOSED), "CLOSED") == 0);
  CHECK(strcmp(laminar_status_str(LAMINAR_SQL_SYNTAX), "SQL_SYNTAX") == 0);
  CHECK(strcmp(laminar_status_str(12345), "UNKNOWN_STATUS") == 0);
  CHECK(strcmp(laminar_status_str(-1), "UNKNOWN_STATUS") == 0);

  /* error accessors accept NULL */
  CHECK(laminar_error_status(NULL) == LAMINAR_INVALID_ARGUMENT);
  CHECK(strcmp(laminar_error_message(NULL), "") == 0);
  CHECK(laminar_error_sql_offset(NULL) == -1);
  laminar_error_destroy(NULL);

  /* NULL required pointers: INVALID_ARGUMENT naming the argument, never a crash */
  CHECK_FAILS(LAMINAR_INVALID_ARGUMENT, "path is NULL", laminar_db_open(NULL, NULL, &db, &err));
  CHECK(db == NULL);
  CHECK_FAILS(LAMINAR_INVALID_ARGUMENT, "out is NULL", laminar_db_open(":memory:", NULL, NULL, &err));
  CHECK_FAILS(LAMINAR_INVALID_ARGUMENT, "db is NULL", laminar_db_execute(NULL, "SELECT 1", NULL, &err));
  CHECK_FAILS(LAMINAR_INVALID_ARGUMENT, "db is NULL", laminar_db_query(NULL, "SELECT 1", &stream, &err));
  CHECK_FAILS(LAMINAR_INVALID_ARGUMENT, "db is NULL", laminar_writer_create(NULL, "s", &w, &err));
  CHECK(w == NULL);
  CHECK_FAILS(LAMINAR_INVALID_ARGUMENT, "db is NULL", laminar_db_subscribe(NULL, "s", NULL, &sub, &err));
  CHECK(sub == NULL);
  CHECK_FAILS(LAMINAR_INVALID_ARGUMENT, "writer is NULL", laminar_writer_watermark(NULL, 1, &err));
  CHECK_FAILS(LAMINAR_INVALID_ARGUMENT, "batch is NULL", laminar_writer_write(NULL, NULL, NULL, &err));
  CHECK_FAILS(LAMINAR_INVALID_ARGUMENT, "sub is NULL", laminar_subscription_next(NULL, 0, &array, &err));
  CHECK_FAILS(LAMINAR_INVALID_ARGUMENT, "sub is NULL", laminar_subscription_request(NULL, 1, &err));
  CHECK_FAILS(LAMINAR_INVALID_ARGUMENT, "config is NULL", laminar_config_set(NULL, "workers", "1", &err));
  CHECK_FAILS(LAMINAR_INVALID_ARGUMENT, "stream is NULL", laminar_db_insert(NULL, "s", NULL, &n, &err));
  /* the same with out_error NULL: only the status */
  CHECK(laminar_db_execute(NULL, "SELECT 1", NULL, NULL) == LAMINAR_INVALID_ARGUMENT);
  /* void functions accept NULL */
  laminar_db_close(NULL);
  laminar_writer_destroy(NULL);
  laminar_subscription_cancel(NULL);
  laminar_subscription_destroy(NULL);
  laminar_config_destroy(NULL);

  CHECK_OK(laminar_db_open(":memory:", NULL, &db, &err));
  CHECK(db != NULL);
  CHECK_FAILS(LAMINAR_INVALID_ARGUMENT, "sql is NULL", laminar_db_execute(db, NULL, NULL, &err));
  CHECK_FAILS(LAMINAR_INVALID_ARGUMENT, "out is NULL", laminar_db_schema(db, "x", NULL, &err));
  CHECK_FAILS(LAMINAR_INVALID_ARGUMENT, NULL, laminar_db_catalog(db, NULL, NULL, &err));

  /* invalid UTF-8 */
  CHECK_FAILS(LAMINAR_INVALID_ARGUMENT, "not valid UTF-8", laminar_db_execute(db, "SELECT '\xff\xfe'", NULL, &err));

  /* SQL errors carry the byte offset of the problem */
  {
    const char *sql = "CREATE SOURCE s (a BIGINT);\nSELEC a FROM s";
    laminar_status st = laminar_db_execute(db, sql, NULL, &err);
    CHECK(st == LAMINAR_SQL_SYNTAX);
    CHECK(laminar_error_status(err) == LAMINAR_SQL_SYNTAX);
    CHECK(laminar_error_sql_offset(err) == (int64_t)(strstr(sql, "SELEC") - sql));
    laminar_error_destroy(err);
    err = NULL;
  }
  /* a failed stream: the status stays the failure's, laminar_error_stream names the stream */
  CHECK(laminar_error_stream(NULL) == NULL);
  CHECK_OK(laminar_db_execute(db, "CREATE SOURCE nums (k BIGINT, v BIGINT)", NULL, &err));
  CHECK_OK(laminar_db_execute(db, "CREATE MATERIALIZED VIEW mv AS SELECT k, 10 / v AS y FROM nums", NULL, &err));
  CHECK_OK(laminar_db_execute(db, "INSERT INTO nums VALUES (1, 0)", NULL, &err));
  {
    laminar_status st = LAMINAR_OK;
    for (int i = 0; i < 500 && st == LAMINAR_OK; i++) { /* the pipeline applies the insert soon */
      st = laminar_db_query(db, "SELECT * FROM mv", &stream, &err);
      if (st == LAMINAR_OK) {
        stream.release(&stream);
        sleep_ms(10);
      }
    }
    CHECK(st == LAMINAR_INVALID_DATA);
    CHECK(laminar_error_stream(err) != NULL && strcmp(laminar_error_stream(err), "mv") == 0);
    CHECK(strstr(laminar_error_message(err), "materialized view 'mv' has failed") != NULL);
    laminar_error_destroy(err);
    err = NULL;
  }
  /* a misspelt name: NOT_FOUND with a suggestion, and the error object outlives the database */
  CHECK_OK(laminar_db_execute(db, "CREATE SOURCE trades (sym VARCHAR, px DOUBLE)", NULL, &err));
  CHECK(laminar_writer_create(db, "trade", &w, &err) == LAMINAR_NOT_FOUND);
  CHECK(w == NULL);
  laminar_db_close(db);
  CHECK(strstr(laminar_error_message(err), "did you mean 'trades'") != NULL);
  CHECK(laminar_error_sql_offset(err) == -1);
  laminar_error_destroy(err);

  /* a status is returned even when out_error is NULL, and nothing is allocated */
  CHECK(laminar_db_open("/dev/null/cannot-be-a-directory", NULL, &db, NULL) == LAMINAR_IO);
  CHECK(db == NULL);
  (void)schema;
  DONE();
}

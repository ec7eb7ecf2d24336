/* Configuration: key/values checked when set, enumeration of known keys, use at open and as
 * subscription options. */
#include "common.h"

int main(void) {
  laminar_config *cfg = NULL;
  laminar_db *db = NULL;
  laminar_subscription *sub = NULL;
  const char *value = NULL;
  size_t i, count;
  int saw_workers = 0;

  CHECK_OK(laminar_config_create(&cfg, &err));
  CHECK_OK(laminar_config_set(cfg, "workers", "2", &err));
  CHECK_OK(laminar_config_set(cfg, "buffer_size", "16", &err));
  CHECK_OK(laminar_config_get(cfg, "workers", &value, &err));
  CHECK(value != NULL && strcmp(value, "2") == 0);
  CHECK_OK(laminar_config_get(cfg, "memory_limit", &value, &err));
  CHECK(value == NULL); /* not set: the default applies */

  /* unknown keys and malformed values are refused, with the nearest key suggested */
  CHECK_FAILS(LAMINAR_INVALID_ARGUMENT, "did you mean 'workers'", laminar_config_set(cfg, "worker", "2", &err));
  CHECK_FAILS(LAMINAR_INVALID_ARGUMENT, "expected 1..=1024", laminar_config_set(cfg, "workers", "0", &err));
  CHECK_FAILS(LAMINAR_INVALID_ARGUMENT, "checkpoint_interval", laminar_config_set(cfg, "checkpoint_interval", "soon", &err));
  CHECK_FAILS(LAMINAR_INVALID_ARGUMENT, "value is NULL", laminar_config_set(cfg, "workers", NULL, &err));
  CHECK_OK(laminar_config_get(cfg, "workers", &value, &err));
  CHECK(strcmp(value, "2") == 0); /* a refused set leaves the old value */

  /* enumeration */
  count = laminar_config_count();
  CHECK(count >= 10);
  for (i = 0; i < count; i++) {
    const char *name = NULL, *desc = NULL;
    CHECK(laminar_config_get_flag(i, &name, &desc) == LAMINAR_OK);
    CHECK(name != NULL && desc != NULL && strlen(desc) > 0);
    if (strcmp(name, "workers") == 0) saw_workers = 1;
  }
  CHECK(saw_workers);
  CHECK(laminar_config_get_flag(count, NULL, NULL) == LAMINAR_INVALID_ARGUMENT);

  /* open with it; the config is not needed afterwards */
  CHECK_OK(laminar_db_open(":memory:", cfg, &db, &err));
  laminar_config_destroy(cfg);
  CHECK_OK(laminar_db_execute(db,
      "CREATE SOURCE s (k BIGINT, ts BIGINT, WATERMARK FOR ts AS ts - 0);"
      "CREATE STREAM c AS SELECT k, COUNT(*) AS n FROM s GROUP BY k", NULL, &err));

  /* as subscription options: only buffer_size and on_full */
  CHECK_OK(laminar_config_create(&cfg, &err));
  CHECK_OK(laminar_config_set(cfg, "on_full", "block", &err));
  CHECK_OK(laminar_db_subscribe(db, "c", cfg, &sub, &err));
  laminar_subscription_destroy(sub);
  CHECK_OK(laminar_config_set(cfg, "workers", "1", &err));
  CHECK_FAILS(LAMINAR_INVALID_ARGUMENT, "not a subscription option", laminar_db_subscribe(db, "c", cfg, &sub, &err));
  CHECK(sub == NULL);
  laminar_config_destroy(cfg);

  /* a durability level that needs a directory is refused for ":memory:" */
  CHECK_OK(laminar_config_create(&cfg, &err));
  CHECK_OK(laminar_config_set(cfg, "durability", "wal", &err));
  {
    laminar_db *db2 = NULL;
    CHECK_FAILS(LAMINAR_INVALID_ARGUMENT, "need a directory", laminar_db_open(":memory:", cfg, &db2, &err));
    CHECK(db2 == NULL);
  }
  laminar_config_destroy(cfg);
  laminar_db_close(db);
  DONE();
}

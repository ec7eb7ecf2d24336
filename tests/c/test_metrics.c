/* Metrics from C: laminar_db_metrics_text returns the Prometheus exposition (counting the rows
 * inserted), released with laminar_free; NULL arguments are INVALID_ARGUMENT; the
 * metrics_addr config key is validated. */
#include "common.h"

int main(void) {
  laminar_db *db = NULL;
  laminar_config *cfg = NULL;
  char *text = NULL;
  CHECK_OK(laminar_db_open(":memory:", NULL, &db, &err));
  CHECK_OK(laminar_db_execute(db, "CREATE SOURCE s (k BIGINT NOT NULL, v BIGINT)", NULL, &err));
  CHECK_OK(laminar_db_execute(db, "CREATE STREAM big AS SELECT k FROM s WHERE v > 10", NULL, &err));
  CHECK_OK(laminar_db_execute(db, "INSERT INTO s VALUES (1, 5), (2, 50), (3, 500)", NULL, &err));
  CHECK_OK(laminar_db_flush(db, &err));

  CHECK_OK(laminar_db_metrics_text(db, &text, &err));
  CHECK(text != NULL);
  CHECK(strstr(text, "# TYPE laminardb_source_records_total counter\n") != NULL);
  CHECK(strstr(text, "laminardb_source_records_total{source=\"s\"} 3\n") != NULL);
  CHECK(strstr(text, "laminardb_stream_records_total{stream=\"big\"} 2\n") != NULL);
  CHECK(strstr(text, "laminardb_checkpoints_completed_total 0\n") != NULL);
  laminar_free(text);
  laminar_free(NULL); /* a no-op */

  text = (char *)1;
  CHECK_FAILS(LAMINAR_INVALID_ARGUMENT, "out_text", laminar_db_metrics_text(db, NULL, &err));
  CHECK_FAILS(LAMINAR_INVALID_ARGUMENT, "db", laminar_db_metrics_text(NULL, &text, &err));
  CHECK(text == NULL);

  CHECK_OK(laminar_config_create(&cfg, &err));
  CHECK_FAILS(LAMINAR_INVALID_ARGUMENT, "metrics_addr", laminar_config_set(cfg, "metrics_addr", "not an address", &err));
  laminar_config_destroy(cfg);
  laminar_db_close(db);
  DONE();
}

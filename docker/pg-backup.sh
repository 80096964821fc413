#!/bin/sh
# pg_dump of the cluster's databases (MLflow's metadata and the Optuna studies) every BACKUP_INTERVAL_S seconds
# (default a day) into BACKUP_DIR, keeping the newest BACKUP_KEEP dumps of each database (default 7).
#   pg-backup.sh           forever (compose's postgres-backup service)
#   pg-backup.sh --once    one round, then exit (a cron job, the tests)
# libpq reads the server and the password from PGHOST, PGUSER and PGPASSFILE: no password on a command line.
# Each dump is written under a hidden name and renamed when whole, so a crash never leaves a half dump where a
# restore would trust it. Restore: pg_restore --clean --if-exists --dbname=DB DUMP (docker/README.md).
set -eu
dir=${BACKUP_DIR:?set BACKUP_DIR to the folder of the dumps}
keep=${BACKUP_KEEP:-7}
every=${BACKUP_INTERVAL_S:-86400}
databases=${BACKUP_DATABASES:-mlflow optuna}

round() {
  stamp=$(date -u +%Y%m%dT%H%M%S%NZ)
  for db in $databases; do
    partial="$dir/.$db-$stamp.dump.partial"
    pg_dump --format=custom --dbname="$db" --file="$partial"
    mv "$partial" "$dir/$db-$stamp.dump"
    # the newest $keep stay (the names sort by time)
    ls -1 "$dir" | grep -E "^$db-[0-9TZ]+\.dump$" | sort -r | tail -n +"$((keep + 1))" \
      | while read -r old; do rm -f "$dir/$old"; done
    echo "pg-backup: $dir/$db-$stamp.dump"
  done
}

mkdir -p "$dir"
if [ "${1:-}" = "--once" ]; then
  round
  exit 0
fi
while :; do
  round
  sleep "$every"
done

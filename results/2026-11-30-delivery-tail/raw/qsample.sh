#!/bin/bash
# qsample.sh DATADIR OUT: samples the niced (delivery store) backend's active statement 10x a second, 8-20 s in.
sleep 8
S=$(sed -n 5p $1/postgres/postmaster.pid); P=$(sed -n 4p $1/postgres/postmaster.pid)
for i in $(seq 120); do
  psql -h $S -p $P -U triggers -d triggers -Atc "select left(regexp_replace(query, '\s+', ' ', 'g'), 70) from pg_stat_activity where state='active' and application_name='triggers' and pid <> pg_backend_pid()" 2>/dev/null
  sleep 0.1
done | sort | uniq -c | sort -rn > $2

#!/bin/bash
# threads.sh SPID PGPID OUTFILE: per-thread (server) and per-process (PostgreSQL) CPU ticks between
# 5 s and 19 s after the start (the load phase), and the machine's idle share over the same window.
snap() { for t in /proc/$1/task/*; do echo "$(cat $t/comm | tr ' ' _) $(awk '{print $14+$15}' $t/stat)"; done | awk '{a[$1]+=$2} END {for (k in a) print k, a[k]}' | sort; }
pgsnap() { for p in $(pgrep -P $2) $2; do echo "$p-n$(awk '{print $19}' /proc/$p/stat 2>/dev/null)-$(tr "\0" " " < /proc/$p/cmdline | cut -c10-30 | tr " " _) $(awk '{print $14+$15}' /proc/$p/stat 2>/dev/null)"; done | sort; }
idle() { awk '/^cpu /{print $5+$6, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat; }
sleep 8; A=$(snap $1); PA=$(pgsnap $1 $2); I0=$(idle); sleep 14; B=$(snap $1); PB=$(pgsnap $1 $2); I1=$(idle)
{ join <(echo "$A") <(echo "$B") | awk '{print "server", $1, $3-$2}'; join <(echo "$PA") <(echo "$PB") | awk '$3-$2>0 {print "pg", $1, $3-$2}';
  echo "$I0 $I1" | awk '{printf "machine idle %.1f%%\n", 100*($3-$1)/($4-$2)}'; } > $3

#!/bin/bash
# cost at 3 rates, bare vs server
out=$1; shift
for rate in 20000 10000 5000; do
  PORT=18483 loadtest/ab.sh $out/r$rate 2 BARE "$@" --rate $rate --duration 15 --orgs 100 --connections 128
done

#!/bin/bash
out=$1; shift
for rate in 5000 10000 20000; do
  PORT=18483 loadtest/ab.sh $out/r$rate 2 "$@" --rate $rate --duration 15 --orgs 100 --connections 128
done

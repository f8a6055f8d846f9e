#!/bin/bash
out=$1; shift
for rate in 300 600; do
  PORT=18483 loadtest/ab.sh $out/r$rate 2 "$@" --scenario batch --batch-size 100 --rate $rate --duration 15 --orgs 100 --connections 64
done

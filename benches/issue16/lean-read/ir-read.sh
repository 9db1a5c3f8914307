#!/bin/bash
# usage: ir.sh SQLFILE ARGS TAG  -> instructions per EXECUTE (single-user backend, generic plan)
B=/usr/lib/postgresql/15/bin; D=/tmp/rd/data; S=/tmp/rd; N=${N:-200}
F=$1; A=$2; T=$3
gen() { echo "SET plan_cache_mode = force_generic_plan;"; echo; echo "PREPARE r(text,text,text,int8,int8,int8${EXTRA}) AS $(cat $F);"; echo; for i in $(seq $1); do echo "EXECUTE r($A);"; echo; done; }
gen 30 > $S/b-$T.sql; gen $((30+N)) > $S/f-$T.sql
run() { setpriv --reuid=postgres --regid=postgres --init-groups valgrind --tool=callgrind --callgrind-out-file=$S/cg-$2.out $B/postgres --single -j -D $D rd < $1 > $S/out-$2.log 2>&1; grep "Collected :" $S/out-$2.log | awk '{print $4}'; }
a=$(run $S/b-$T.sql b-$T); b=$(run $S/f-$T.sql f-$T)
grep -m3 -i error $S/out-f-$T.log
printf "%s %s: %.0f instructions/read\n" $(basename $F) "$T" $(echo "($b-$a)/$N" | bc -l)

# bench/chart.gp — one bar per measurement (per second, log scale); bench/run passes
# datafile (index "label" value) and outfile.
set terminal pngcairo size 1100,560 font ",10"
set output outfile
set title "rkl throughput vs. this machine's ceilings (per second, log scale)"
set style fill solid 0.8 border -1
set boxwidth 0.7
set logscale y
set yrange [1:*]
set grid ytics
set xtics rotate by -30 nomirror
unset key
plot datafile using 1:3:xtic(2) with boxes lc rgb "#3b75af", \
     '' using 1:($3*1.25):(sprintf("%.0f", $3)) with labels

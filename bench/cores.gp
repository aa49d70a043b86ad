# bench/cores.gp — the core sweep (bench/run --cores): end-to-end terminals/s against the
# number of CPUs K the whole deployment and rkl-pos were confined to. bench/run passes
# datafile (K rate per line) and outfile.
set terminal pngcairo size 800,480 font ",10"
set output outfile
set title "rkl end to end: terminals/s on K CPUs (median of the fleets)"
set xlabel "CPUs (K)"
set ylabel "terminals/s"
set xtics 1
set yrange [0:*]
set grid
unset key
plot datafile using 1:2 with linespoints lw 2 pt 7 lc rgb "#3b75af", \
     '' using 1:2:(sprintf("%.0f", $2)) with labels offset 0,1

# pymemtrace process timeline: PID 25932 /root/.pyenv/versions/3.11.7/bin/python3 fixtures/rss_ste...
# Run `gnuplot process_steps_gnuplot.plt` in this file's directory: it reads process_steps_gnuplot.dat and writes process_steps_gnuplot.png.
# Columns of the data: 1 t(s), 2 RSS (bytes), 3 page faults/s, 4 user CPU s, 5 mean CPU %,
# 6 instantaneous CPU %, 7 timestamp, 8 PID, 9 label. Rows of all processes are interleaved;
# each curve keeps its PID's rows and makes the others NaN, which `set datafile missing NaN`
# skips without breaking the line (gnuplot 5).
set encoding utf8
if (strstrt(GPVAL_TERMINALS, 'pngcairo') > 0) { set terminal pngcairo size 1000,700 } else { set terminal png size 1000,700 }
set termoption noenhanced
set output 'process_steps_gnuplot.png'
set datafile separator whitespace
set datafile missing NaN
set title 'PID 25932 /root/.pyenv/versions/3.11.7/bin/python3 fixtures/rss_ste...'
set xlabel 'time (s)'
set ylabel 'RSS (MB)'
set y2label 'CPU % / scaled faults'
set grid xtics ytics lt 1 lw 1 lc rgb '#e4e4e4'
set ytics nomirror
set y2tics
set xrange [0:3.500117144]
set yrange [0:*]
set y2range [0:100]
set key below center horizontal reverse Left font ',10' height 1
set arrow from 1.199727299, graph 0 to 1.199727299, graph 1 nohead dt 2 lc rgb '#5a5a5a'
set label 'after the first step' at 1.199727299, graph 0.97 rotate by 90 right offset character 1.5, 0 textcolor rgb '#5a5a5a'
set arrow from 2.801109002, graph 0 to 2.801109002, graph 1 nohead dt 2 lc rgb '#5a5a5a'
set label 'before freeing' at 2.801109002, graph 0.97 rotate by 90 right offset character 1.5, 0 textcolor rgb '#5a5a5a'
plot 'process_steps_gnuplot.dat' using 1:($8==25932 ? $2/1e6 : NaN) with lines lw 2 lc rgb '#1f77b4' title '25932 /root/.pyenv/versions/3.11.7/bin/python…', \
     'process_steps_gnuplot.dat' using 1:($8==25932 ? $6 : NaN) axes x1y2 with lines lw 1 lc rgb '#505050' title 'CPU % (PID 25932)', \
     'process_steps_gnuplot.dat' using 1:($8==25932 ? $3/1e3 : NaN) axes x1y2 with lines lw 1 dt 2 lc rgb '#8c8c8c' title 'page faults/s / 1e3 (PID 25932)'

"""The research benchmark (``slperf bench --suite NAME|FILE``): a matrix of paradigms x datasets x partitions
x client counts x seeds from one suite file, each cell a real local federation (server and client daemons as
separate processes over mutual TLS on loopback), plus a centralized baseline per dataset and seed.

It sits in the app layer, beside the CLI and the federation launcher, because it starts federations; neither
daemon imports it. One module per job:

    suite        suite files (built-in ones are package data in suites/), partitions, cells, matrix expansion
    estimate     expected seconds per cell, refined by finished cells
    store        results.jsonl: rows appended as cells finish, the last row of a key wins
    rows         a results row from what a runner measured
    runners      how a cell is measured: a federation, or the centralized baseline in its own process
    memory       peak RSS readings (/proc VmHWM, getrusage), cheap enough to import in measured processes
    probe        peak RSS of the federation's children, through the launcher's hooks
    centralized  the centralized baseline (``python -m slperf.bench.centralized``)
    report       results.csv, report.md and plots from rows
    machine      what the machine was doing, for every benchmark's figures
    run          the suite loop (``run_suite``)

Results go to one folder:

    results.jsonl   one row per cell (appended as cells finish; the last row of a key wins), with its curve
    results.csv     the same rows without the curves
    report.md       comparison tables, one per dataset x partition x client count, centralized row in each
    plots/          accuracy vs round, vs bytes on the wire, vs training time: one line per paradigm
    configs/        the resolved config of every cell
    runs/           one folder per federation cell attempt (<cell>-<time>-<random>/): its run folder and logs

Nothing is imported here, so that ``slperf.bench.machine`` and ``slperf.bench.memory`` stay cheap to import.
"""

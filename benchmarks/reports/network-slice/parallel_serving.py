"""Does a parallel paradigm's server keep serving one client while another's replies are in flight? Round time with
1 client vs 2 clients, each on its own 5 Mbit/25 ms link, the same shard size per client. Root:
`python benchmarks/reports/network-slice/parallel_serving.py` (writes /tmp/netpar/par.json)."""

import json
from pathlib import Path

import yaml

from slperf.federation import run_federation
from slperf.slserver.run_folder import RunFolder

out = Path("/tmp/netpar")
out.mkdir(exist_ok=True)
results = []
for paradigm in ("splitfed_v1", "vanilla"):
    for clients in (1, 2):
        cfg = {
            "paradigm": paradigm,
            "dataset": "mnist",
            "clients": clients,
            "epochs": 1,
            "batch_size": 32,
            "lr": 0.05,
            "max_train_samples": 400 * clients,
            "max_test_samples": 100,
            "torch_threads": 1,
            "network": {"rate_mbit": 5, "delay_ms": 25},
        }
        path = out / f"{paradigm}-{clients}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        s = run_federation(path, out / f"runs-{paradigm}-{clients}", show_progress=False, echo=lambda m: None)
        rec = RunFolder(Path(s["run_dir"])).read_metrics()[0]
        pc = rec["per_client"]
        row = {
            "paradigm": paradigm,
            "clients": clients,
            "round_s": round(rec["round_seconds"], 2),
            "server_busy_s": round(s["server_compute_seconds"], 2),
            "train_MB_per_client": round(sum(f["bytes_up"] + f["bytes_down"] for f in pc.values()) / len(pc) / 1e6, 2),
            "link_up_mbit": [round(m["up_mbit"], 2) for m in s["network"]["links"]],
        }
        print(json.dumps(row), flush=True)
        results.append(row)
(out / "par.json").write_text(json.dumps(results, indent=1))

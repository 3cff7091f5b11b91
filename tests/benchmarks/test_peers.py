"""`sd3 benchmark --only peers`: skipped in one line without stable-diffusion.cpp; the table's ratios."""

from sd3.testing import benchmark, benchmark_peers


def test_without_the_package_peers_are_skipped_in_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(benchmark_peers.importlib.util, "find_spec", lambda name: None)
    assert benchmark.main(["--only", "peers", "--tiny", "--cache-dir", str(tmp_path), "--out", str(tmp_path / "b.json")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ['stable-diffusion.cpp is not installed (pip install -e ".[bench]", or --sd-cli PATH): peers skipped']
    assert benchmark_peers.peer_available(str(tmp_path / "sd")) == f"--sd-cli {tmp_path / 'sd'}: no such file"
    monkeypatch.setattr(benchmark_peers, "peer_available", lambda sd_cli: None)  # installed, but tiny files
    assert benchmark.main(["--only", "peers", "--tiny", "--cache-dir", str(tmp_path), "--out", str(tmp_path / "b.json")]) == 0
    assert "cannot load the tiny architecture): peers skipped" in capsys.readouterr().err


def test_the_table_pairs_the_implementations_and_names_the_threads():
    row = dict(format="Q8_0", res=256, threads=2)
    results = [{**row, "impl": "ours", "step_s": 2.0, "command_s": 20.0, "peak_rss_bytes": 2**31},
               {**row, "impl": "sd.cpp", "step_s": 4.0, "command_s": 80.0, "peak_rss_bytes": 2**32}]
    table = benchmark_peers.peers_table(results).splitlines()
    assert "threads" in table[0] and len(table) == 2
    assert table[1].split()[:3] == ["Q8_0", "256", "2"] and table[1].split()[5] == "0.50"

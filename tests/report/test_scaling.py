"""The scaling experiment's measurement and figures (CPU sizes)."""
import pandas as pd

from flare.report.scaling import attention_layer, run_scaling, scaling_figures


def test_every_method_maps_tokens_to_tokens():
    import torch

    x = torch.randn(1, 50, 16)
    for method in ("flare_reference", "softmax", "physics"):
        assert attention_layer(method, 16, 4, 8)(x).shape == x.shape


def test_scaling_records_times_and_skips_what_cannot_run(tmp_path):
    frame = run_scaling([32, 64], [4], ["flare_reference", "flare_triton", "softmax", "physics"], channels=16,
                        heads=4, precision="fp32", device="cpu", max_softmax_points=32, warmup=1, reps=2)
    status = {(m, n): s for m, n, s in zip(frame["method"], frame["points"], frame["status"])}
    assert status[("flare_reference", 64)] == "ok" and status[("physics", 32)] == "ok"
    assert status[("softmax", 64)] == "skipped: quadratic" and status[("softmax", 32)] == "ok"
    assert status[("flare_triton", 32)] == "skipped: needs CUDA"
    assert (frame.loc[frame["status"] == "ok", "ms"] > 0).all()
    outputs = [tmp_path / "time.png"], [tmp_path / "memory.png"]
    scaling_figures(frame, *outputs)
    assert all(p.stat().st_size > 1000 for group in outputs for p in group)
    assert isinstance(frame, pd.DataFrame) and set(frame["device"]) == {"cpu"}

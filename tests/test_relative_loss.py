"""``train.loss: relative``: each box's MSE over its own mean square.

- the value: per-sample relative MSE, averaged; invariant to rescaling one sample's pred
  and target together, so a low-amplitude box counts as much as a high one (plain MSE:
  by the square of its amplitude);
- configuration: an unknown loss is refused by the config check with one line;
- a real 2-step training run with it records ``loss: relative`` in its checkpoint.
"""
import pytest
import torch
import yaml

from cosmonet.train.losses import displacement_loss, relative_mse

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_relative_mse_weights_every_box_by_its_relative_error():
    g = torch.Generator().manual_seed(0)
    target = torch.randn(2, 3, 4, 4, 4, generator=g)
    pred = target + 0.1 * torch.randn(2, 3, 4, 4, 4, generator=g)
    per = [torch.mean((pred[i] - target[i]) ** 2) / torch.mean(target[i] ** 2) for i in range(2)]
    assert float(relative_mse(pred, target)) == pytest.approx(float((per[0] + per[1]) / 2), rel=1e-6)
    small = torch.tensor([1.0, 0.1]).view(2, 1, 1, 1, 1)        # the second box at a tenth of the amplitude
    assert float(relative_mse(pred * small, target * small)) == pytest.approx(float(relative_mse(pred, target)), rel=1e-5)
    plain = torch.mean((pred * small - target * small) ** 2)
    assert float(plain) < 0.6 * float(torch.mean((pred - target) ** 2))   # MSE all but drops the small box
    assert float(displacement_loss(pred, target, 6.0, 32.0, relative=True)) == pytest.approx(float(relative_mse(pred, target)))
    assert float(relative_mse(torch.zeros(1, 3, 2, 2, 2), torch.zeros(1, 3, 2, 2, 2))) == 0.0   # no 0/0


def test_config_checks_the_loss(tmp_path, capsys):
    from cosmonet.cli import main
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"name": "unet"}, "data": {"root": str(tmp_path)},
                                   "train": {"loss": "l1"}, "out": str(tmp_path / "run")}))
    assert main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cosmonet: error: ") and "train.loss" in err[0] and "relative" in err[0]


def test_training_with_the_relative_loss(tiny_pairs, tmp_path, capsys):
    from cosmonet.cli import main
    from cosmonet.train.checkpoint import load_checkpoint, resolve_checkpoint
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "model": {"name": "unet", "base_channels": 4, "depth": 1, "norm": "group"},
        "data": {"root": str(tiny_pairs), "scale": 4.0, "num_workers": 0, "val_split": ""},
        "train": {"batch_size": 2, "max_steps": 2, "log_every": 1, "precision": "fp32", "loss": "relative"},
        "out": str(tmp_path / "run")}))
    assert main(["train", str(cfg)]) == 0
    state = load_checkpoint(resolve_checkpoint(str(tmp_path / "run")))
    assert state["config"]["train"]["loss"] == "relative"

import numpy as np
import pytest
import torch

from export_tools import ExportError
from export_tools.recipes.fashion_data import CLASS_NAMES, load_split
from export_tools.recipes.fashion_train import TrainConfig, Trainer, trained_networks

TINY = dict(
    latent_dim=8,
    width=4,
    head_hidden=16,
    batch_size=64,
    autoencoder_epochs=1,
    flow_epochs=2,
    flow_couplings=4,
    flow_hidden=16,
    head_epochs=1,
    generator_epochs=1,
)


@pytest.fixture(scope="module")
def tiny_run(tiny_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    torch.set_num_threads(1)
    Trainer(TrainConfig(**TINY), out, tiny_dataset, log=lambda line: None).run()
    return out


def test_finished_run_gives_whitened_codes_an_invertible_flow_and_working_heads(tiny_run, tiny_dataset):
    config, nets, vocab = trained_networks(tiny_run)
    train = load_split("train", tiny_dataset)
    with torch.no_grad():
        z = nets.encoder(torch.from_numpy(train.images).permute(0, 3, 1, 2).float() / 255)
        assert np.allclose(z.mean(0), 0, atol=1e-3)
        assert np.allclose(torch.cov(z.T), np.eye(config.latent_dim), atol=1e-3)
        u, log_det = nets.flow.inverse(z)
        assert torch.allclose(nets.flow(u), z, atol=1e-4) and log_det.shape == (len(z),)
        assert nets.flow.log_prob(z).mean() > -0.5 * config.latent_dim * 2.84 - 5  # it learned something
        assert nets.generator(nets.flow(u[:4])).shape == (4, 3, 32, 32)
        assert nets.head(u[:4]).shape == (4, len(CLASS_NAMES))
        tokens = torch.tensor([[1, 2, 0, 0]] * 4)
        logp = nets.captioner(u[:4], tokens, torch.tensor([[1.0, 1, 1, 0]] * 4))
        assert logp.shape == (4,) and (logp < 0).all()


def test_resume_refuses_another_configuration(tiny_run, tiny_dataset):
    changed = Trainer(TrainConfig(**{**TINY, "code_noise": 0.5}), tiny_run, tiny_dataset, log=lambda line: None)
    with pytest.raises(ExportError, match=r"another configuration \(code_noise: 0\.2 -> 0\.5\)"):
        changed.run()


def test_resume_extends_a_run_without_repeating_finished_epochs(tiny_run, tiny_dataset, tmp_path):
    lines = []
    extended = Trainer(TrainConfig(**{**TINY, "head_epochs": 2}), tiny_run, tiny_dataset, log=lines.append)
    progress = extended.run()
    assert progress.epochs_done == {"autoencoder": 1, "whitening": 1, "flow": 2, "head": 2, "generator": 1}
    assert [line for line in lines if "done in" in line] == [next(text for text in lines if "[head] epoch 2/2" in text)]


def test_unfinished_or_missing_run_is_refused(tmp_path):
    with pytest.raises(ExportError, match="train first"):
        trained_networks(tmp_path)
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ExportError, match="cannot read checkpoint"):
        trained_networks(tmp_path)

"""Where nla relies on more of Lightning than its documented API, each in one place: these fail when the library
changes under it, before a user meets the change."""

import inspect
import typing

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningCLI
from torch.nn.parallel import DistributedDataParallel

from nla import NLAModule
from nla.cli.lightning import NLACLI
from nla.cli.trainer import NLA_HELP, NLATrainer, reworded
from nla.settings import CLASS_PATH_KEY, LIGHTNING_CLI_KEYS


def test_lightning_cli_still_reads_checkpoints_through_the_method_nla_replaces():
    """LightningCLI reads --ckpt_path's model settings over the command line's in _parse_ckpt_path; nla replaces it
    with its own reading. Renamed, Lightning's would run again, a resumed fit's settings too."""
    source = inspect.getsource(LightningCLI.__init__)
    assert source.index("self.parse_arguments(") < source.index("self._parse_ckpt_path()")
    assert source.index("self._parse_ckpt_path()") < source.index("self.before_instantiate_classes()")
    assert NLACLI._parse_ckpt_path is not LightningCLI._parse_ckpt_path


def test_a_checkpoint_holds_the_keys_lightning_cli_adds_to_hyperparameters(trained_run):
    checkpoint = torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["datamodule_hyper_parameters"][CLASS_PATH_KEY] == "nla.data.RAFDBDataModule"
    found = set(checkpoint["hyper_parameters"]) | set(checkpoint["datamodule_hyper_parameters"])
    assert set(LIGHTNING_CLI_KEYS) <= found


def test_nla_trainer_s_options_are_lightning_s_with_integers_first_and_nla_s_help():
    ours, theirs = inspect.signature(NLATrainer), inspect.signature(Trainer)
    assert list(ours.parameters) == list(theirs.parameters)  # the same options, nothing dropped
    assert typing.get_args(ours.parameters["limit_train_batches"].annotation)[0] is int
    for name, text in NLA_HELP.items():
        assert f"{name}: {text}" in (NLATrainer.__init__.__doc__ or "")


def test_help_lightning_no_longer_documents_is_left_as_it_is():
    """A Lightning whose Trainer docstring words a parameter otherwise: nla's commands still start, with its help."""
    docstring = "Args:\n    precision: Lightning's text.\n\n    devices: Lightning's text.\n\n"
    changed = reworded(docstring, {"precision": "nla's text.", "default_root_dir": "nla's text."})
    assert changed == docstring.replace("precision: Lightning's text.", "precision: nla's text.")


def test_ddp_still_leaves_alone_the_buffers_each_process_sums_itself():
    """DDP copies rank 0's buffers into every process before each forward pass, except those a module names in
    _ddp_params_and_buffers_to_ignore (PyTorch's documented workaround): NLAModule names its per-process sums."""
    assert "_ddp_params_and_buffers_to_ignore" in inspect.getsource(DistributedDataParallel.__init__)
    module = NLAModule(backbone="test_resnet", num_classes=7)
    ignored = set(module._ddp_params_and_buffers_to_ignore)
    assert ignored == {"mechanism.sums", "loss_watch.flag", "loss_watch.record"}
    assert ignored <= {name for name, _ in module.named_buffers()}

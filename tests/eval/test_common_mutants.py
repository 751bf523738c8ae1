"""What the evaluation commands share (:mod:`umt.eval.common`), on the cases the CLI tests never reach: the
loader-view fallbacks, the evaluation DataConfig taken from a run's own, the accumulator's sink and range checks on
a hand-worked table, process placement without a process group, and the no-overwrite rule."""

from __future__ import annotations

import types
from pathlib import Path

import pytest
import torch

from umt.eval.common import (CountError, DistContext, IndexAccumulator, autocast, broadcast_flag, check_free,
                             close_distributed, dist_info, eval_data_config, init_distributed, iterate,
                             loader_num_views, model_inputs)


def test_loader_num_views_falls_back_to_the_config_then_to_one() -> None:
    assert loader_num_views(types.SimpleNamespace(num_views="6")) == 6  # an int, from whatever the loader holds
    assert loader_num_views(types.SimpleNamespace(num_views=0)) == 0  # 0 is a value, not "missing"
    cfg = types.SimpleNamespace(temporal_views=4, spatial_views=3)
    assert loader_num_views(types.SimpleNamespace(cfg=cfg)) == 12
    assert loader_num_views(types.SimpleNamespace(cfg=types.SimpleNamespace(temporal_views=5))) == 5
    assert loader_num_views(types.SimpleNamespace(cfg=types.SimpleNamespace(spatial_views=3))) == 3
    assert loader_num_views(object()) == 1


def test_eval_config_takes_normalisation_backend_workers_and_seed_from_the_run() -> None:
    base = types.SimpleNamespace(backend="reference", num_workers=3, mean=[0.1, 0.2, 0.3], std=[0.4, 0.5, 0.6],
                                 seed=17)
    cfg = eval_data_config("some/shards", batch_size=5, num_frames=6, input_size=48, views=(2, 3), base=base)
    assert (cfg.backend, cfg.num_workers, cfg.seed) == ("reference", 3, 17)
    assert tuple(cfg.mean) == (0.1, 0.2, 0.3) and tuple(cfg.std) == (0.4, 0.5, 0.6)
    assert (cfg.shards, cfg.batch_size, cfg.num_frames, cfg.input_size) == ("some/shards", 5, 6, 48)
    assert (cfg.num_sample, cfg.train, cfg.flip, cfg.drop_last) == (1, False, False, False)
    assert (cfg.temporal_views, cfg.spatial_views) == (2, 3)
    # explicit overrides beat the run's values
    cfg = eval_data_config("s", batch_size=1, num_frames=2, input_size=32, base=base, num_workers=0, seed=3)
    assert (cfg.num_workers, cfg.seed, cfg.backend) == (0, 3, "reference")
    assert (cfg.temporal_views, cfg.spatial_views) == (1, 1)


def test_iterate_prefers_epoch_zero_of_a_video_loader() -> None:
    seen = []

    class VideoLoaderLike:
        def epoch_iter(self, epoch: int):  # noqa: ANN201
            seen.append(epoch)
            return iter(["a", "b"])

        def __iter__(self):  # noqa: ANN204
            return iter(["wrong"])

    assert list(iterate(VideoLoaderLike())) == ["a", "b"] and seen == [0]
    assert list(iterate([1, 2, 3])) == [1, 2, 3]


def test_model_inputs_cast_to_fp32_only_without_autocast() -> None:
    batch = {"video": torch.ones(2, 3, 1, 2, 2, dtype=torch.bfloat16), "label": torch.tensor([1, 0])}
    (video, b), = list(model_inputs([batch], torch.device("cpu"), None))
    assert video.dtype == torch.float32 and b is batch
    (video, _), = list(model_inputs([batch], torch.device("cpu"), torch.bfloat16))
    assert video.dtype == torch.bfloat16


def test_autocast_uses_the_given_dtype() -> None:
    with autocast(torch.device("cpu"), torch.float16):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float16


def test_check_free_names_the_default_flag(tmp_path: Path) -> None:
    (tmp_path / "x").write_text("")
    with pytest.raises(FileExistsError, match="pass --overwrite$"):
        check_free([tmp_path / "x"], overwrite=False)


def test_autocast_is_off_for_fp32_and_on_for_bf16() -> None:
    with autocast(torch.device("cpu"), None):
        assert not torch.is_autocast_enabled("cpu")
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    with autocast(torch.device("cpu"), torch.bfloat16):
        assert torch.is_autocast_enabled("cpu")
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


def test_single_process_placement() -> None:
    assert dist_info() == (0, 1)
    assert broadcast_flag(True, torch.device("cpu")) is True
    assert broadcast_flag(False, torch.device("cpu")) is False


def test_init_distributed_without_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("WORLD_SIZE", "LOCAL_RANK", "RANK"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device in ("cpu", "auto"):
        ctx = init_distributed(device)
        assert ctx == DistContext(0, 1, torch.device("cpu"), False)
        close_distributed(ctx)  # owns no group: nothing to tear down
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        init_distributed("cuda")
    with pytest.raises(ValueError, match="auto\\|cpu\\|cuda"):
        init_distributed("gpu")


def test_check_free(tmp_path: Path) -> None:
    free, taken = tmp_path / "new.json", tmp_path / "old.json"
    taken.write_text("{}")
    check_free([free], overwrite=False)
    check_free([free, taken], overwrite=True)
    with pytest.raises(FileExistsError, match=f"{taken}.*--force-it"):
        check_free([free, taken], overwrite=False, flag="--force-it")
    assert taken.read_text() == "{}"


# ------------------------------------------------------------------------------------------ the accumulator
def test_accumulator_hand_worked_table() -> None:
    # N=3 samples, D=2, V=2 views. Rows: sample 2 view 1, padding, sample 0 view 0, sample 2 view 0,
    # sample 1 view 1, sample 0 view 1, sample 1 view 0.
    acc = IndexAccumulator(3, 2, 2, "cpu")
    values = torch.tensor([[1.0, 2.0], [100.0, 100.0], [3.0, 5.0], [7.0, 11.0], [13.0, 17.0], [19.0, 23.0],
                           [29.0, 31.0]])
    index = torch.tensor([2, -1, 0, 2, 1, 0, 1])
    view = torch.tensor([1, 0, 0, 0, 1, 1, 0])
    label = torch.tensor([4, 9, 6, 4, 5, 6, 5])
    acc.add(values[:3], index[:3], label[:3], view[:3])
    acc.add(values[3:], index[3:], label[3:], view[3:])
    acc.reduce()
    acc.check()
    sums, labels = acc.totals()
    torch.testing.assert_close(sums, torch.tensor([[22.0, 28.0], [42.0, 48.0], [8.0, 13.0]]), rtol=0, atol=0)
    assert labels.tolist() == [6, 5, 4] and labels.dtype == torch.int64 and sums.dtype == torch.float32
    assert acc.rows == 7
    assert acc.counts.view(4, 2)[:3].tolist() == [[1, 1], [1, 1], [1, 1]]


def test_accumulator_without_views_counts_view_zero() -> None:
    acc = IndexAccumulator(2, 1, 1, "cpu")
    acc.add(torch.tensor([[2.0], [3.0]]), torch.tensor([1, 0]), torch.tensor([0, 1]))
    acc.check()
    sums, labels = acc.totals()
    assert sums.tolist() == [[3.0], [2.0]] and labels.tolist() == [1, 0]


@pytest.mark.parametrize("index, view, match", [
    ([0, 1, 2], [0, 0, 0], "1 rows with an index outside \\[-1, 2\\) and 0 with a view outside \\[0, 1\\)"),
    ([0, 1, -2], [0, 0, 0], "1 rows with an index outside"),
    ([0, 1, -1], [0, 1, 0], "0 rows with an index outside \\[-1, 2\\) and 1 with a view outside"),
    ([0, 1, -1], [0, -1, 0], "and 1 with a view outside"),
    ([0, 1, -1], [0, 0, 5], None),  # a padding row's view is never checked
])
def test_accumulator_range_checks(index: list[int], view: list[int], match: str | None) -> None:
    acc = IndexAccumulator(2, 1, 1, "cpu")
    acc.add(torch.ones(3, 1), torch.tensor(index), torch.zeros(3, dtype=torch.int64), torch.tensor(view))
    if match is None:
        acc.check()
        assert acc.totals()[0].tolist() == [[1.0], [1.0]]
    else:
        with pytest.raises(CountError, match=match):
            acc.check()


def test_accumulator_names_the_first_wrong_sample_and_the_missing_count() -> None:
    acc = IndexAccumulator(5, 1, 2, "cpu")
    # sample 0 complete, sample 1 seen twice in view 0 and never in view 1, samples 2, 3 and 4 never seen
    acc.add(torch.ones(4, 1), torch.tensor([0, 0, 1, 1]), torch.zeros(4, dtype=torch.int64),
            torch.tensor([0, 1, 0, 0]))
    with pytest.raises(CountError, match="4 of 5 items not counted exactly once per view \\(3 never seen; item 1 "
                                         "has per-view counts \\[2, 0\\], expected 2 × 1\\)"):
        acc.check("item")


def test_accumulator_takes_any_integer_and_float_dtypes() -> None:
    # int32 indices and labels, int16 views, float64 values: converted, not mixed into the int64/float32 tables
    acc = IndexAccumulator(2, 2, 2, "cpu")
    acc.add(torch.tensor([[0.5, 1.5], [2.0, 4.0], [8.0, 16.0], [9.0, 9.0]], dtype=torch.float64),
            torch.tensor([1, 0, 1, 0], dtype=torch.int32), torch.tensor([300, 7, 300, 7], dtype=torch.int32),
            torch.tensor([0, 1, 1, 0], dtype=torch.int16))
    acc.check()
    sums, labels = acc.totals()
    assert sums.tolist() == [[11.0, 13.0], [8.5, 17.5]] and labels.tolist() == [7, 300]  # labels above 2·62 too


def test_accumulator_counts_bad_rows_over_batches_and_pads_with_any_view() -> None:
    acc = IndexAccumulator(2, 1, 2, "cpu")
    acc.add(torch.ones(1, 1), torch.tensor([0]), torch.tensor([0]), torch.tensor([2]))  # sample 0, view 2: bad
    acc.add(torch.ones(4, 1), torch.tensor([0, 0, 1, 1]), torch.zeros(4, dtype=torch.int64),
            torch.tensor([0, 1, 0, 1]))  # a clean batch after it does not clear the count
    with pytest.raises(CountError, match="0 rows with an index outside \\[-1, 2\\) and 1 with a view outside"):
        acc.check()
    # padding rows with a negative view go to the sink, never into sample 1's last view
    acc = IndexAccumulator(2, 1, 2, "cpu")
    acc.add(torch.ones(6, 1), torch.tensor([0, 0, 1, 1, -1, -1]), torch.zeros(6, dtype=torch.int64),
            torch.tensor([0, 1, 0, 1, -1, -3]))
    acc.check()
    assert acc.counts.view(3, 2)[:2].tolist() == [[1, 1], [1, 1]]


def test_accumulator_labels_must_agree_per_sample() -> None:
    acc = IndexAccumulator(3, 1, 1, "cpu")
    acc.add(torch.ones(3, 1), torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5]))
    acc.add(torch.zeros(0, 1), torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64))
    acc.check()
    acc = IndexAccumulator(3, 1, 2, "cpu")
    acc.add(torch.ones(6, 1), torch.tensor([0, 0, 1, 1, 2, 2]), torch.tensor([3, 3, 4, 7, 5, 5]),
            torch.tensor([0, 1, 0, 1, 0, 1]))
    with pytest.raises(CountError, match="rows of sample 1 carry different labels \\(4 and 7\\)"):
        acc.check()


@pytest.mark.parametrize("shape", [(0, 1, 1), (1, 0, 1), (1, 1, 0)])
def test_accumulator_sizes_must_be_positive(shape: tuple[int, int, int]) -> None:
    with pytest.raises(ValueError, match=">= 1"):
        IndexAccumulator(*shape, "cpu")
    IndexAccumulator(1, 1, 1, "cpu")


@pytest.mark.parametrize("values, index, label", [
    (torch.ones(2, 3), torch.zeros(2), torch.zeros(2)),  # wrong width
    (torch.ones(2), torch.zeros(2), torch.zeros(2)),  # not 2-D
    (torch.ones(2, 2), torch.zeros(3), torch.zeros(2)),  # index rows differ
    (torch.ones(2, 2), torch.zeros(2), torch.zeros(1)),  # label rows differ
])
def test_accumulator_batch_shapes(values: torch.Tensor, index: torch.Tensor, label: torch.Tensor) -> None:
    acc = IndexAccumulator(2, 2, 1, "cpu")
    with pytest.raises(ValueError, match="expected values \\[R, 2\\]"):
        acc.add(values, index.long(), label.long())


# ------------------------------------------------------------------ placement under torchrun (process group faked)
class _FakeGroup:
    """Stands in for ``torch.distributed``'s default group: records the calls, reports rank/world once created."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, initialized: bool = False, rank: int = 0,
                 world: int = 1) -> None:
        import umt.eval.common as common

        self.calls: list[tuple] = []
        self.initialized, self.rank, self.world = initialized, rank, world
        d = common.dist
        monkeypatch.setattr(d, "is_available", lambda: True)
        monkeypatch.setattr(d, "is_initialized", lambda: self.initialized)
        monkeypatch.setattr(d, "get_rank", lambda: self.rank)
        monkeypatch.setattr(d, "get_world_size", lambda: self.world)
        monkeypatch.setattr(d, "init_process_group", self._init)
        monkeypatch.setattr(d, "barrier", lambda: self.calls.append(("barrier",)))
        monkeypatch.setattr(d, "destroy_process_group", lambda: self.calls.append(("destroy",)))

    def _init(self, *args, **kw) -> None:  # noqa: ANN002, ANN003
        self.calls.append(("init", args, kw))
        self.initialized = True


def _torchrun_env(monkeypatch: pytest.MonkeyPatch, world: int, local: int, cuda: bool) -> list:
    monkeypatch.setenv("WORLD_SIZE", str(world))
    monkeypatch.setenv("LOCAL_RANK", str(local))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    devices: list = []
    monkeypatch.setattr(torch.cuda, "set_device", devices.append)
    return devices


@pytest.mark.parametrize("device", ["cuda", "auto"])
def test_init_distributed_on_gpus_uses_nccl_on_the_local_device(monkeypatch: pytest.MonkeyPatch, device: str) -> None:
    devices = _torchrun_env(monkeypatch, world=4, local=3, cuda=True)
    group = _FakeGroup(monkeypatch, rank=5, world=4)
    ctx = init_distributed(device)
    assert ctx == DistContext(5, 4, torch.device("cuda", 3), True)
    assert devices == [torch.device("cuda", 3)]
    assert group.calls == [("init", ("nccl",), {"device_id": torch.device("cuda", 3)})]
    close_distributed(ctx)
    assert group.calls[1:] == [("barrier",), ("destroy",)]  # the barrier first


def test_init_distributed_on_cpus_uses_gloo(monkeypatch: pytest.MonkeyPatch) -> None:
    devices = _torchrun_env(monkeypatch, world=2, local=1, cuda=True)  # a GPU exists but the CPU is asked for
    group = _FakeGroup(monkeypatch, rank=1, world=2)
    assert init_distributed("cpu") == DistContext(1, 2, torch.device("cpu"), True)
    assert devices == [] and group.calls == [("init", ("gloo",), {"device_id": None})]


def test_init_distributed_joins_an_existing_group_and_leaves_it(monkeypatch: pytest.MonkeyPatch) -> None:
    _torchrun_env(monkeypatch, world=2, local=0, cuda=False)
    group = _FakeGroup(monkeypatch, initialized=True, rank=1, world=2)
    ctx = init_distributed("auto")
    assert ctx == DistContext(1, 2, torch.device("cpu"), False) and group.calls == []
    close_distributed(ctx)
    assert group.calls == []  # not ours to destroy


def test_one_process_under_torchrun_makes_no_group(monkeypatch: pytest.MonkeyPatch) -> None:
    _torchrun_env(monkeypatch, world=1, local=0, cuda=False)
    group = _FakeGroup(monkeypatch)
    assert init_distributed("auto") == DistContext(0, 1, torch.device("cpu"), False) and group.calls == []
    # a context that claims the group, but none exists: nothing to tear down
    close_distributed(DistContext(0, 1, torch.device("cpu"), True))
    assert group.calls == []


def test_init_distributed_defaults_auto_and_local_rank_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    devices = _torchrun_env(monkeypatch, world=2, local=0, cuda=True)
    monkeypatch.delenv("LOCAL_RANK")  # torchrun always sets it; a hand-made launch may not
    group = _FakeGroup(monkeypatch, rank=0, world=2)
    assert init_distributed() == DistContext(0, 2, torch.device("cuda", 0), True)
    assert devices == [torch.device("cuda", 0)] and group.calls[0][1] == ("nccl",)

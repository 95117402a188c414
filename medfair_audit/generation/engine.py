"""The generation engine: shards of images, written atomically, resumable, split over processes.

Work is cut into shards of ``shard_size`` images of one prompt. A shard is the unit of batching,
of distribution (process ``r`` of ``w`` takes shards ``r, r + w, ...``) and of resumption: a
finished shard is a ``.safetensors`` file plus a ``.json`` manifest, both renamed into place,
so a killed run that is started again with the same settings skips it. Each shard stores what
the audit needs downstream (images as uint8, classifier probabilities and features), so the
expensive part never runs twice.

A plan of many shards (thousands of prompts) would leave two files per shard; instead each
process gathers its finished shards into packs (a stored ZIP of their files, renamed into place
complete, then the loose files removed), so the folder holds a bounded number of files. Packs
change neither the images nor the result, and resume reads loose and packed shards alike.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from .._io import atomic_file, atomic_write_bytes, atomic_write_json
from ..config import GenerationConfig
from ..device import is_out_of_memory
from ..exceptions import ConfigError, DataError, ResourceError
from ..progress import ProgressCallback, report
from .seeds import image_seed

__all__ = [
    "GenerationConfig",
    "Shard",
    "ShardStore",
    "iter_shards",
    "plan_shards",
    "run_shards",
    "stored_shards",
    "to_uint8",
]


@dataclass(frozen=True)
class Shard:
    """Images ``start .. stop-1`` of prompt ``prompt_index``."""

    prompt_index: int
    start: int
    stop: int

    @property
    def name(self) -> str:
        """File stem of the shard."""
        return f"p{self.prompt_index:04d}-i{self.start:07d}"

    @staticmethod
    def key(name: str) -> tuple[int, int]:
        """``(prompt_index, start)`` of a shard's file stem (sorts past 9,999 prompts too)."""
        p, i = name.split("-")
        return int(p[1:]), int(i[1:])


def plan_shards(n_prompts: int, config: GenerationConfig) -> list[Shard]:
    """All shards, in a fixed order that does not depend on the number of processes."""
    return [
        Shard(p, a, min(a + config.shard_size, config.n_per_prompt))
        for p in range(n_prompts)
        for a in range(0, config.n_per_prompt, config.shard_size)
    ]


def settings_hash(settings: dict[str, Any]) -> str:
    """Hash of everything that determines a shard's content."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] as the uint8 the shards store (0 for -1, 255 for 1, rounded)."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


#: A plan of more shards than this gathers its finished shards into packs (``pack-<first>.zip``,
#: stored uncompressed) of :func:`pack_size` shards each, so an audit of any number of prompts
#: ends with about this many files in ``shards/`` (plus one per process); a plan this small or
#: smaller keeps one ``.safetensors`` and ``.json`` pair per shard.
MAX_PACKS = 128
PACK_PREFIX = "pack-"


def pack_size(n_shards: int) -> int:
    """Shards per pack for a plan of ``n_shards`` (1: no packs, every shard keeps its files)."""
    return max(1, -(-n_shards // MAX_PACKS))


class ShardStore:
    """The finished shards in a folder, loose or packed, read the same way.

    A loose shard is a ``.safetensors`` and a ``.json`` file; a pack is a stored ZIP of such
    pairs, its comment the settings hash they were drawn under.

    Args:
        folder: The shard folder.
        stamp: Settings hash of the current run: packs written under other settings are left
            out (see :meth:`drop_stale`); ``None`` reads every pack.
    """

    def __init__(self, folder: str | os.PathLike[str], stamp: str | None = None) -> None:
        self.folder = Path(folder)
        self.stale: list[Path] = []
        self._packed: dict[str, Path] = {}
        self._open: tuple[Path, zipfile.ZipFile] | None = None
        self._by_prompt: dict[int, list[str]] | None = None  # names(), read once
        for pack in sorted(self.folder.glob(f"{PACK_PREFIX}*.zip")):
            try:
                with zipfile.ZipFile(pack) as zf:
                    comment, members = zf.comment.decode(), zf.namelist()
            except (zipfile.BadZipFile, UnicodeDecodeError) as exc:
                raise DataError(
                    f"'{pack}' is not a readable shard pack ({exc}): delete it and run again to "
                    "redraw the shards it held",
                    param="out",
                ) from exc
            if stamp is not None and comment != stamp:
                self.stale.append(pack)
                continue
            for member in members:
                if member.endswith(".json"):
                    self._packed[member[: -len(".json")]] = pack

    def _loose(self, name: str) -> tuple[Path, Path]:
        return self.folder / f"{name}.json", self.folder / f"{name}.safetensors"

    def names(self, prompt_index: int | None = None) -> list[str]:
        """Every finished shard's name (only ``prompt_index``'s if given), in plan order.

        The folder is listed once per store, so reading a finished audit prompt by prompt does
        not list it again for every prompt.
        """
        if self._by_prompt is None:
            loose = {
                p.stem for p in self.folder.glob("p*-i*.json") if self._loose(p.stem)[1].is_file()
            }
            self._by_prompt = {}
            for name in sorted(loose | set(self._packed), key=Shard.key):
                self._by_prompt.setdefault(Shard.key(name)[0], []).append(name)
        if prompt_index is not None:
            return list(self._by_prompt.get(prompt_index, []))
        return [name for p in sorted(self._by_prompt) for name in self._by_prompt[p]]

    def packed(self, shard: Shard) -> bool:
        """Whether a pack (of this run's settings) holds ``shard``."""
        return shard.name in self._packed

    def load(self, name: str) -> dict[str, Any] | None:
        """Shard ``name``'s arrays and manifest, or ``None`` if it is not (completely) there."""
        from safetensors.torch import load, load_file

        meta_path, data_path = self._loose(name)
        if meta_path.is_file() and data_path.is_file():
            return {"meta": json.loads(meta_path.read_text()), **load_file(str(data_path))}
        pack = self._packed.get(name)
        if pack is None:
            return None
        if self._open is None or self._open[0] != pack:  # shards are read pack after pack
            self.close()
            self._open = (pack, zipfile.ZipFile(pack))
        zf = self._open[1]
        meta = json.loads(zf.read(f"{name}.json"))
        return {"meta": meta, **load(zf.read(f"{name}.safetensors"))}

    def close(self) -> None:
        """Close the pack last read from."""
        if self._open is not None:
            self._open[1].close()
            self._open = None

    def pack(self, shards: Sequence[Shard], stamp: str) -> None:
        """Gather loose finished ``shards`` into one pack, then remove their loose files.

        The pack is renamed into place complete, so a kill leaves either the loose files or the
        pack (or both, tidied by :meth:`tidy`): nothing finished is lost.
        """
        path = self.folder / f"{PACK_PREFIX}{shards[0].name}.zip"
        with atomic_file(path) as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as zf:
            zf.comment = stamp.encode()
            for shard in shards:
                for file in reversed(self._loose(shard.name)):
                    zf.write(file, file.name)
        for shard in shards:
            self._packed[shard.name] = path
            for file in self._loose(shard.name):
                file.unlink(missing_ok=True)

    def tidy(self, shards: Sequence[Shard]) -> None:
        """Remove the loose files of ``shards`` that a pack of this run's settings holds.

        They are left by a kill between writing a pack and removing what it gathered.
        """
        for shard in shards:
            if shard.name in self._packed:
                for file in self._loose(shard.name):
                    file.unlink(missing_ok=True)

    def drop_stale(self, owns: Callable[[str], bool]) -> None:
        """Remove packs written under other settings (their shards have been redrawn).

        Only the packs named after a shard ``owns`` accepts: a pack is named after its first
        shard, and only the process that draws that shard writes a pack of that name, so no
        process removes a pack another one has just written in its place. A pack of this run
        that has taken such a name stays.
        """
        current = set(self._packed.values())
        for pack in self.stale:
            if owns(pack.stem.removeprefix(PACK_PREFIX)) and pack not in current:
                pack.unlink(missing_ok=True)
        self.stale = []


def load_shard(folder: str | os.PathLike[str], shard: Shard) -> dict[str, Any] | None:
    """A finished shard's arrays and manifest, or ``None`` if it is not (completely) there."""
    store = ShardStore(folder)
    try:
        return store.load(shard.name)
    finally:
        store.close()


def _finish(
    folder: Path,
    shard: Shard,
    prompt: str,
    seeds: list[int],
    images: torch.Tensor,
    analyse: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    stamp: str,
    image_stamp: str | None = None,
) -> None:
    """Check, classify, featurise and write one generated shard (runs beside the next batch).

    ``image_stamp`` (recorded as the manifest's ``images``) hashes what decides the pixels
    alone, so that another audit may read these images with other classifiers.
    """
    from safetensors.torch import save

    with torch.inference_mode():
        bad = ~torch.isfinite(images).flatten(1).all(dim=1)
        if bad.any():
            j = int(bad.nonzero()[0])
            raise DataError(
                f"the pipeline produced NaN/inf pixels for prompt {shard.prompt_index} "
                f"('{prompt[:60]}'), image {shard.start + j}, seed {seeds[j]}: the "
                "checkpoint may be broken (or overflows in float16: try --dtype bfloat16)",
                param="checkpoint",
            )
        probs, feats = analyse(images)
        for name, values in (("classifier", probs), ("features", feats)):
            if not torch.isfinite(values).all():
                raise DataError(
                    f"the {name} gave NaN/inf outputs for prompt {shard.prompt_index} "
                    f"('{prompt[:60]}'), images {shard.start}-{shard.stop - 1}: its weights may "
                    "be broken",
                    param="classifier" if name == "classifier" else "features",
                )
        arrays = {
            "images": to_uint8(images).cpu().contiguous(),
            "probs": probs.double().cpu().contiguous(),
            "features": feats.double().cpu().contiguous(),
            "seeds": torch.tensor(seeds, dtype=torch.int64),
        }
    atomic_write_bytes(folder / f"{shard.name}.safetensors", save(arrays))
    atomic_write_json(
        folder / f"{shard.name}.json",
        {
            "prompt_index": shard.prompt_index,
            "prompt": prompt,
            "start": shard.start,
            "stop": shard.stop,
            "settings": stamp,
            **({} if image_stamp is None else {"images": image_stamp}),
        },
    )


def _record_image_stamp(
    store: ShardStore, shard: Shard, meta: dict[str, Any], image_stamp: str
) -> None:
    """Add the image hash to a loose shard's manifest (a packed one is left as it is)."""
    if not store.packed(shard):
        atomic_write_json(store.folder / f"{shard.name}.json", {**meta, "images": image_stamp})


def _out_of_memory(exc: BaseException, config: GenerationConfig) -> ResourceError:
    return ResourceError(
        f"out of memory with {config.shard_size} images per batch ({exc.__class__.__name__}): "
        f"lower --batch-size (e.g. {max(1, config.shard_size // 2)}), or try --vae-slicing, "
        "--dtype bfloat16/float16",
        param="batch_size",
    )


def run_shards(
    generate: Callable[[str, list[int]], torch.Tensor],
    prompts: Sequence[str],
    config: GenerationConfig,
    folder: str | os.PathLike[str],
    *,
    analyse: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    settings: dict[str, Any],
    rank: int = 0,
    world: int = 1,
    overlap: bool = True,
    progress: ProgressCallback | None = None,
    only: Callable[[Shard], bool] | None = None,
    image_settings: dict[str, Any] | None = None,
    images_from: str | os.PathLike[str] | None = None,
) -> list[Shard]:
    """Generate this process's shards that are not finished yet.

    With ``overlap``, a shard is checked, analysed and written on a worker thread while the next
    one is generated (at most one shard waits), so the classifier, the feature extractor and the
    disk keep pace with the pipeline instead of taking turns with it.

    Args:
        generate: ``(prompt, seeds) -> images (N, C, H, W)`` in [-1, 1], image ``i`` from
            ``seeds[i]`` alone (e.g. :func:`medfair_audit.models.pipelines.generate`).
        prompts: The prompts, indexed as in the plan.
        config: Generation settings.
        folder: Where shards go.
        analyse: Maps images ``(N, C, H, W)`` in [-1, 1] to (probabilities, features).
        settings: Everything that determines the content (checkpoint hash, classifier hash,
            extractor, ...); a shard written under other settings is regenerated.
        rank: This process's index.
        world: Number of processes.
        overlap: Analyse and write each shard while the next is generated.
        progress: Called after each shard with images done by this process.
        only: Draw only the plan's shards this accepts (one round of a ``--precision`` audit),
            split over the processes as the whole plan would be.
        image_settings: The part of ``settings`` that decides the pixels (checkpoint hash,
            dtype, ...; not the classifier or the features): its hash, with the generation
            settings and prompts, is written into every shard, so that another run can read
            these images (``images_from``).
        images_from: Another run's shard folder: read each shard's stored 8-bit images from
            there instead of generating them, and analyse them anew. Its shards must have been
            drawn under the same ``image_settings``, generation settings and prompts.

    Returns:
        The whole plan (all processes' shards).

    Raises:
        DataError: The pipeline produced NaN or infinite values (reported with prompt and
            seed); shards finished before stay on disk.
        ResourceError: Out of memory (names ``--batch-size``); finished shards stay on disk.
        ConfigError: ``images_from`` lacks a shard of the plan, or drew it under other
            settings (names ``images_from``).
    """
    from concurrent.futures import Future, ThreadPoolExecutor

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    plan = plan_shards(len(prompts), config)
    stamp = settings_hash({**settings, **asdict(config), "prompts": list(prompts)})
    image_stamp = (
        None
        if image_settings is None
        else settings_hash({**image_settings, **asdict(config), "prompts": list(prompts)})
    )
    source = None if images_from is None else ImageSource(images_from, image_stamp)
    mine = plan[rank::world] if only is None else [s for s in plan if only(s)][rank::world]
    total = sum(s.stop - s.start for s in mine)
    done = 0
    report(progress, "generate", 0, total)
    pending: tuple[Future, Shard] | None = None
    store = ShardStore(folder, stamp)
    store.tidy(mine)
    own = {s.name for s in mine}
    size = pack_size(len(plan))
    loose: list[Shard] = []  # finished, not packed yet
    packing: list[Future] = []

    def wait() -> None:
        nonlocal pending
        if pending is not None:
            (job, shard), pending = pending, None
            job.result()  # re-raises the worker's error here
            advance(shard)

    def advance(shard: Shard, **info: Any) -> None:
        nonlocal done
        done += shard.stop - shard.start
        report(progress, "generate", done, total, **info)
        if size > 1 and not store.packed(shard):
            loose.append(shard)
            if len(loose) >= size:
                pack()

    def pack() -> None:  # on the writer thread, after the shards it gathers were written
        group = loose[:]
        loose.clear()
        if executor is None:
            store.pack(group, stamp)
        else:
            packing.append(executor.submit(store.pack, group, stamp))

    executor = ThreadPoolExecutor(max_workers=1) if overlap else None
    try:
        for shard in mine:
            existing = store.load(shard.name)
            if existing is not None and existing["meta"].get("settings") == stamp:
                if image_stamp is not None and "images" not in existing["meta"]:
                    # written before manifests recorded it: the same settings drew these pixels
                    _record_image_stamp(store, shard, existing["meta"], image_stamp)
                advance(shard, resumed=True)
                continue
            prompt = prompts[shard.prompt_index]
            seeds = [
                image_seed(config.seed, shard.prompt_index, i)
                for i in range(shard.start, shard.stop)
            ]
            with torch.inference_mode():
                images = generate(prompt, seeds) if source is None else source.images(shard, seeds)
            args = (folder, shard, prompt, seeds, images, analyse, stamp, image_stamp)
            if executor is None:
                _finish(*args)
                advance(shard)
                continue
            wait()  # at most one shard in flight: memory stays at two batches
            pending = (executor.submit(_finish, *args), shard)
        wait()
        if loose:
            pack()
        for job in packing:
            job.result()
        # each process its own shards' old packs; the main one also those of no current shard
        names = {s.name for s in plan}
        store.drop_stale(lambda n: n in own or (rank == 0 and n not in names))
    except Exception as exc:
        if is_out_of_memory(exc):
            raise _out_of_memory(exc, config) from exc
        raise
    finally:
        if executor is not None:  # a shard already generated is still written
            executor.shutdown(wait=True)
        store.close()
        if source is not None:
            source.close()
    return plan


class ImageSource:
    """Another run's stored images, read shard by shard instead of generating them.

    Args:
        folder: That run's shard folder.
        image_stamp: The image hash this run's shards would carry (``None``: the caller
            passed no ``image_settings``, and no shard can be checked against it).
    """

    def __init__(self, folder: str | os.PathLike[str], image_stamp: str | None) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise ConfigError(
                f"expected an audit's shard folder, but '{self.folder}' is not a folder",
                param="images_from",
            )
        if image_stamp is None:
            raise ConfigError(
                "reading another run's images needs image_settings", param="images_from"
            )
        self.image_stamp = image_stamp
        self.store = ShardStore(self.folder)

    def images(self, shard: Shard, seeds: list[int]) -> torch.Tensor:
        """Shard ``shard``'s images in [-1, 1] (float32), after checking how they were drawn."""
        got = self.store.load(shard.name)
        where = f"shard {shard.name} of '{self.folder}'"
        if got is None:
            raise ConfigError(
                f"{where} is missing: read images only from a finished audit of the same "
                "prompts and images per prompt",
                param="images_from",
            )
        drawn = got["meta"].get("images")
        if drawn is None:
            raise ConfigError(
                f"{where} does not record how its images were drawn (an audit of an earlier "
                "medfair): run that audit again to read its images here (with --overwrite; an "
                "audit of more than 128 shards keeps them in packs, which are redrawn only "
                "after removing its shards/)",
                param="images_from",
            )
        if drawn != self.image_stamp or got["seeds"].tolist() != list(seeds):
            raise ConfigError(
                f"{where} was drawn under other settings (checkpoint, dtype, prompts, seed, "
                "steps, guidance or batch size differ): its images are not this audit's",
                param="images_from",
            )
        return got["images"].float() / 127.5 - 1.0

    def close(self) -> None:
        """Close the pack last read from."""
        self.store.close()


def iter_shards(folder: str | os.PathLike[str], plan: Sequence[Shard]) -> Iterator[dict[str, Any]]:
    """Finished shards of the plan, one at a time, in plan order.

    Raises:
        DataError: A shard is missing (another process has not finished it).
    """
    store = ShardStore(folder)
    try:
        for shard in plan:
            data = store.load(shard.name)
            if data is None:
                raise DataError(f"shard {shard.name} is missing from '{folder}'", param="out")
            yield data
    finally:
        store.close()


def stored_shards(
    folder: str | os.PathLike[str],
    prompt_index: int | None = None,
    *,
    store: ShardStore | None = None,
) -> Iterator[dict[str, Any]]:
    """Every finished shard in ``folder`` (loose or packed), in plan order, without a plan.

    For reading a finished audit's images back; only ``prompt_index``'s if given. Pass the same
    ``store`` (of ``folder``) to read many prompts one after the other without listing the
    folder and its packs again each time; the caller then closes it.
    """
    own = store is None
    store = ShardStore(folder) if store is None else store
    try:
        for name in store.names(prompt_index):
            data = store.load(name)
            if data is not None:
                yield data
    finally:
        if own:
            store.close()

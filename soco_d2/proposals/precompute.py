"""Resumable, sharded, multi-process precomputation of a whole dataset.

The images of a shard (every ``num_shards``-th image in key order, from
``shard_id``) are cut into chunks of ``chunk_size``.  Each finished chunk is
committed atomically as a small cache file in ``<output>.parts/``; when all
chunks are there they are merged into ``<output>`` (atomically) and the parts
are removed.  A run killed at any point and restarted with the same
arguments skips the committed chunks, and because the final file is always
assembled from the same records in the same way, it is byte-identical to an
uninterrupted run's.  ``run.json`` in the parts folder pins the settings, so
a restart with different ones is refused instead of mixing results.
"""
from __future__ import annotations

import collections
import json
import logging
import multiprocessing as mp
import os
import shutil
import signal
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from .cache import FORMAT_VERSION, CacheWriter, ProposalCache, image_ids_digest, make_parent_dir, merge_caches
from .generate import ProposalGenerator, ProposalSpec, process_image
from .lifetime import die_with_parent, mark_parent, parent_alive_pipe

logger = logging.getLogger("soco_d2.proposals")


def shard_path(output: str, shard_id: int, num_shards: int) -> str:
    """``x.pcache`` -> ``x.shard-00003-of-00016.pcache`` (the plain name when unsharded)."""
    if num_shards <= 1:
        return output
    stem, ext = os.path.splitext(output)
    return f"{stem}.shard-{shard_id:05d}-of-{num_shards:05d}{ext}"


def find_shards(output: str) -> list:
    """Shard files of ``output`` on disk, checked to be one complete set."""
    import glob
    import re

    stem, ext = os.path.splitext(output)
    pat = re.compile(re.escape(os.path.basename(stem)) + r"\.shard-(\d{5})-of-(\d{5})" + re.escape(ext) + "$")
    found = {}
    for p in glob.glob(glob.escape(stem) + ".shard-*-of-*" + ext):
        m = pat.search(os.path.basename(p))
        if m:
            found.setdefault(int(m.group(2)), {})[int(m.group(1))] = p
    if not found:
        raise FileNotFoundError(f"no shard files {stem}.shard-XXXXX-of-NNNNN{ext} to merge")
    if len(found) > 1:
        raise ValueError(f"shard files of runs with different --num-shards next to {output}: {sorted(found)}")
    (total, shards), = found.items()
    missing = sorted(set(range(total)) - set(shards))
    if missing:
        raise FileNotFoundError(
            f"cannot merge {output}: shard(s) {missing} of {total} are missing (not finished?). "
            f"Run them with --num-shards {total} --shard-id I first."
        )
    return [shards[i] for i in range(total)]


def _key(s: str) -> bytes:
    return s.encode("utf-8")


def select_shard(items: list, num_shards: int, shard_id: int) -> list:
    """Sorted, de-duplicated-checked (image_id, file_name) pairs of one shard."""
    if num_shards < 1:
        raise ValueError(f"--num-shards must be >= 1, got {num_shards}")
    if not 0 <= shard_id < num_shards:
        raise ValueError(f"--shard-id must be in [0, {num_shards - 1}], got {shard_id}")
    items = sorted(((str(k), f) for k, f in items), key=lambda kv: _key(kv[0]))
    dups = [items[i][0] for i in range(1, len(items)) if items[i][0] == items[i - 1][0]]
    if dups:
        raise ValueError(f"the dataset has duplicate image_id values (e.g. {dups[:3]}); cache keys must be unique")
    return items[shard_id::num_shards]


# ------------------------------------------------------------------ workers
_WORKER_GEN = None


def _init_worker(spec: ProposalSpec, alive=None):
    global _WORKER_GEN
    if alive is not None:
        die_with_parent(alive)  # nothing outlives a killed run (soco_d2.proposals.lifetime)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    import cv2

    cv2.setNumThreads(1)  # one core per process: throughput scales with --workers
    _WORKER_GEN = ProposalGenerator(spec)


def _work(task):
    return process_image(_WORKER_GEN, *task)


class _Runner:
    """Ordered results of per-image tasks, surviving worker crashes.

    With ``workers == 0`` everything runs in this process.  Otherwise a
    process pool computes a bounded window of tasks; if a worker dies (a
    segfault in a native library, the OOM killer), the pool is rebuilt and
    the tasks that were in flight are retried one at a time, so only the
    image that kills a worker is skipped.
    """

    def __init__(self, spec: ProposalSpec, workers: int):
        self.spec, self.workers = spec, workers
        self.pool = None
        if workers == 0:
            import cv2

            cv2.setNumThreads(1)
            self.gen = ProposalGenerator(spec)

    def _new_pool(self, n):
        # Workers are forked from a fresh "forkserver" process that has imported
        # this module but never run OpenCV: forking the caller itself could copy
        # locked mutexes of OpenCV's / OpenMP's thread pools (a deadlock when the
        # caller used them), and "spawn" would re-import torch in every worker.
        if "forkserver" in mp.get_all_start_methods():
            ctx = mp.get_context("forkserver")
            ctx.set_forkserver_preload([__name__, f"{__package__}.forkserver_preload"])
            mark_parent()
        else:
            ctx = mp.get_context("spawn")
        return ProcessPoolExecutor(n, mp_context=ctx, initializer=_init_worker,
                                   initargs=(self.spec, parent_alive_pipe()))

    def run(self, tasks):
        if self.workers == 0:
            for t in tasks:
                yield process_image(self.gen, *t)
            return
        tasks = iter(tasks)
        window = collections.deque()
        self.pool = self._new_pool(self.workers)
        try:
            while True:
                while len(window) < 2 * self.workers:
                    t = next(tasks, None)
                    if t is None:
                        break
                    window.append((t, self.pool.submit(_work, t)))
                if not window:
                    return
                t, fut = window[0]
                try:
                    res = fut.result()
                except BrokenProcessPool:
                    pending = [t for t, _ in window]
                    window.clear()
                    self.pool.shutdown(wait=False, cancel_futures=True)
                    logger.warning("a worker process died; retrying %d in-flight images one by one", len(pending))
                    for t in pending:
                        yield self._isolated(t)
                    self.pool = self._new_pool(self.workers)
                    continue
                window.popleft()
                yield res
        finally:
            self.close()

    def _isolated(self, task):
        pool = self._new_pool(1)
        try:
            return pool.submit(_work, task).result()
        except BrokenProcessPool:
            return {"image_id": task[0], "ok": False, "category": "crash", "reason": "the worker process died on this image"}
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def close(self):
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = None


# --------------------------------------------------------------------- run
def _atomic_write_text(path: str, text: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def cache_header(spec: ProposalSpec, source: dict, num_shards: int, shard_id: int) -> dict:
    header = {"method": spec.method, "generator": spec.header(), "versions": spec.versions(), "source": source}
    if num_shards > 1:
        header["shard"] = {"num_shards": num_shards, "shard_id": shard_id}
    return header


def _fingerprint(header: dict, keys: list, chunk_size: int) -> dict:
    return {"format_version": FORMAT_VERSION, "header": header, "chunk_size": chunk_size, "num_images": len(keys),
            "image_ids_sha256": image_ids_digest(keys)}


def _complete(path: str, header: dict, keys: list) -> bool:
    """Does ``path`` already hold this run's finished result?"""
    try:
        with ProposalCache(path) as c:
            same = all(c.header.get(k) == v for k, v in header.items()) and c.header.get("shard") == header.get("shard")
            return same and len(c) + len(c.skipped) == len(keys)
    except (OSError, ValueError, KeyError):
        return False


def precompute(items, spec: ProposalSpec, output: str, *, source: dict | None = None, workers: int = 1,
               chunk_size: int = 64, num_shards: int = 1, shard_id: int = 0, overwrite: bool = False,
               progress: bool = True) -> dict:
    """Compute the cache of ``items`` ((image_id, file_name) pairs, the whole
    dataset) for one shard.  Returns the summary dict (also logged)."""
    if workers < 0:
        raise ValueError(f"--workers must be >= 0, got {workers}")
    if chunk_size < 1:
        raise ValueError(f"--chunk-size must be >= 1, got {chunk_size}")
    t_start = time.perf_counter()
    shard = select_shard(items, num_shards, shard_id)
    path = shard_path(output, shard_id, num_shards)
    header = cache_header(spec, source or {}, num_shards, shard_id)
    keys = [k for k, _ in shard]
    parts_dir = path + ".parts"
    make_parent_dir(path)
    if os.path.exists(path):
        if _complete(path, header, keys):
            if os.path.isdir(parts_dir):
                shutil.rmtree(parts_dir, ignore_errors=True)
            logger.info("%s is already complete (same settings, %d images); nothing to do", path, len(keys))
            return dict(summarize(path), already_complete=True)
        if not overwrite:
            raise FileExistsError(
                f"{path} exists but is not this run's result (other settings or images, or a damaged file); "
                "pass --overwrite to replace it"
            )
    fp = _fingerprint(header, keys, chunk_size)
    run_file = os.path.join(parts_dir, "run.json")
    if os.path.isdir(parts_dir):
        try:
            previous = json.load(open(run_file))
        except (OSError, ValueError):
            previous = None
        if previous != fp:
            if not overwrite and previous is not None and previous.get("format_version") != FORMAT_VERSION:
                raise FileExistsError(
                    f"{parts_dir} holds an interrupted run of another soco_d2 version (cache format "
                    f"v{previous.get('format_version')}, this one writes v{FORMAT_VERSION}); pass --overwrite to "
                    f"start again"
                )
            if not overwrite:
                raise FileExistsError(
                    f"{parts_dir} holds an interrupted run with other settings or images; rerun with the "
                    f"same arguments to resume it, or pass --overwrite to discard it"
                )
            shutil.rmtree(parts_dir)
    os.makedirs(parts_dir, exist_ok=True)
    if not os.path.exists(run_file):
        _atomic_write_text(run_file, json.dumps(fp, sort_keys=True, indent=1))
    for name in os.listdir(parts_dir):  # leftovers of a killed write
        if name.endswith(".tmp"):
            os.unlink(os.path.join(parts_dir, name))

    chunks = [shard[i : i + chunk_size] for i in range(0, len(shard), chunk_size)]
    part_paths = [os.path.join(parts_dir, f"chunk-{i:06d}.pcache") for i in range(len(chunks))]
    done = set()
    for i, p in enumerate(part_paths):
        if os.path.exists(p):
            if _complete(p, dict(header, chunk=i), [k for k, _ in chunks[i]]):
                done.add(i)
            else:
                os.unlink(p)
    todo = [i for i in range(len(chunks)) if i not in done]
    reused = sum(len(chunks[i]) for i in done)
    if reused:
        logger.info("resuming %s: %d of %d images already done", path, reused, len(shard))

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(shard), initial=reused, unit="img", desc=os.path.basename(path), dynamic_ncols=True,
                   smoothing=0.05, mininterval=0.5,
                   bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_noinv_fmt}]")
    runner = _Runner(spec, workers)
    computed, t0 = 0, time.perf_counter()
    modes = collections.Counter()
    pending = {i: [] for i in todo}
    tasks = [(k, f) for i in todo for k, f in chunks[i]]
    chunk_of = {k: i for i in todo for k, _ in chunks[i]}
    try:
        for res in runner.run(tasks):
            i = chunk_of[res["image_id"]]
            pending[i].append(res)
            computed += 1
            if res["ok"]:
                modes[res["mode"]] += 1
            else:
                msg = f"skipped {res['image_id']}: {res['category']}: {res['reason']}"
                (bar.write(msg) if bar else logger.warning(msg))
            if bar:
                bar.update(1)
            if len(pending[i]) == len(chunks[i]):
                _commit_chunk(part_paths[i], spec.kind, dict(header, chunk=i), pending.pop(i))
    finally:
        runner.close()
        if bar:
            bar.close()
    seconds = time.perf_counter() - t0
    merge_caches(part_paths, path, drop=("chunk",), require_all_shards=False)
    shutil.rmtree(parts_dir, ignore_errors=True)
    summary = summarize(path, computed=computed, seconds=seconds, reused=reused)
    summary["wall_seconds"] = time.perf_counter() - t_start
    summary["decoded_modes_now"] = dict(sorted(modes.items()))
    return summary


def _commit_chunk(path: str, kind: str, header: dict, results: list) -> None:
    w = CacheWriter(path, kind, header)
    try:
        for r in results:
            if r["ok"]:
                w.add_record(r["image_id"], r["record"])
            else:
                w.add_skipped(r["image_id"], f"{r['category']}: {r['reason']}")
        w.commit()
    except BaseException:
        w.abort()
        raise


def summarize(path: str, computed: int = 0, seconds: float = 0.0, reused: int = 0) -> dict:
    """Counts of a finished cache (from its header) plus this invocation's timing."""
    with ProposalCache(path) as c:
        h = c.header
        skipped = collections.Counter(reason.split(":", 1)[0] for reason in c.skipped.values())
        s = {
            "output": path,
            "kind": c.kind,
            "images": len(c) + len(c.skipped),
            "stored": len(c),
            "skipped": sum(skipped.values()),
            "skipped_by_reason": dict(sorted(skipped.items())),
            "computed_now": computed,
            "reused_from_previous_run": reused,
            "seconds": seconds,
            "images_per_second": computed / seconds if seconds > 0 else 0.0,
            "bytes": os.path.getsize(path),
        }
        st = h["stats"]
        s["tiny_images"] = st.get("tiny_images", 0)
        if c.kind == "boxes":
            names = h["generator"].get("filter_stages", ["main"])
            by = {}
            for code, n in st["images_by_stage_code"].items():
                name = names[int(code)] if int(code) < len(names) else "empty"
                by[name] = by.get(name, 0) + n
            s.update(boxes=st["boxes"], images_by_filter_stage=by, images_without_boxes=st["images_without_boxes"])
        else:
            s.update(segments=st["segments"], max_segments_per_image=st["max_segments_per_image"])
    return s


def format_summary(s: dict) -> str:
    lines = [
        f"{'already complete:' if s.get('already_complete') else 'wrote'} {s['output']} ({s['kind']}, {s['bytes']:,} bytes)",
        f"  images: {s['images']} = {s['stored']} stored + {s['skipped']} skipped"
        + (f" {s['skipped_by_reason']}" if s["skipped"] else ""),
    ]
    if not s.get("already_complete"):
        lines.append(
            f"  this run: {s['computed_now']} computed in {s['seconds']:.1f} s ({s['images_per_second']:.2f} img/s, "
            "including worker start-up)"
            + (f", {s['reused_from_previous_run']} reused from the interrupted run" if s["reused_from_previous_run"] else "")
        )
    if s.get("decoded_modes_now"):
        lines.append(f"  decoded this run by file mode (converted to RGB): {s['decoded_modes_now']}")
    if s.get("tiny_images"):
        lines.append(f"  tiny images (side < min_image_side; whole image / one segment): {s['tiny_images']}")
    if s["kind"] == "boxes":
        per = s["boxes"] / max(s["stored"], 1)
        lines.append(f"  boxes: {s['boxes']} ({per:.1f} per image); images by filter stage: {s['images_by_filter_stage']}")
    else:
        per = s["segments"] / max(s["stored"], 1)
        lines.append(f"  segments: {s['segments']} ({per:.1f} per image, max {s['max_segments_per_image']})")
    return "\n".join(lines)

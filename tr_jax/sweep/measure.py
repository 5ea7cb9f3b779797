"""The measure stages of a sweep (outputs for CKA, LMC, Bezier, Hessian) as a mixin of
``tr_jax.sweep.run.Pipeline``: each runs over pairs or members in chunks of whole cells, each
chunk committed as its own record; a grown sweep measures only its new pairs and members."""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from tr_jax import landscape, sharding
from tr_jax import members as mem
from tr_jax.sweep import partial, stages
from tr_jax.sweep.train import _progress, padded_idx

CURVE_KEYS = ("train_error", "train_loss", "test_error", "test_loss")


class MeasureStages:
    """LMC + CKA, Bezier and Hessian (needs the ``Pipeline`` attributes, see ``TrainStages``)."""

    # -- stage 4: per-chunk measure stages ------------------------------------------------------
    def _chunked(self, stage: str, items: np.ndarray, chunk: int, compute, desc: str) -> dict:
        """``compute(idx) -> {key: array [len(idx), ...]}`` over ``items`` (pair or member
        indices) in chunks of ``chunk``, each chunk committed as its own record (written once);
        a resumed stage reads the records that are done and computes the rest. Returns the
        arrays of every item, in the order of ``items``."""
        n = len(items)
        done = {(lo, hi): arrays for lo, hi, arrays in self.wd.load_chunks(stage)}
        spans = [(lo, min(lo + chunk, n)) for lo in range(0, n, max(1, chunk))]
        have = sum(hi - lo for lo, hi in spans if (lo, hi) in done)
        if have:
            self.say(f"{stage}: resuming after {have}/{n} items")
        results = []
        with _progress(n, desc, self.progress) as bar:
            bar.update(have)
            for lo, hi in spans:
                if (lo, hi) not in done:
                    done[(lo, hi)] = {k: np.asarray(v) for k, v in compute(items[lo:hi]).items()}
                    self.wd.save_chunk(stage, lo, hi, done[(lo, hi)])
                    self._metrics_chunk(stage, lo, hi, n, chunk)
                    partial.committed(self, stage, items, done)  # cells.partial.csv
                    bar.update(hi - lo)
                results.append(done[(lo, hi)])
        return {k: np.concatenate([r[k] for r in results]) for k in results[0]} if results else {}

    def _per_item(self, stage: str, kind: str, old: dict | None, keys: tuple[str, ...],
                  per_cell: int, chunk: int, compute, desc: str) -> dict:
        """A measure stage over every pair (``kind='pairs'``) or member: computed in chunks, or
        — for a grown sweep — only the new ones, the finished run's numbers kept as they are."""
        total = len(self.grid.pairs()) if kind == "pairs" else self.grid.num_members
        items = np.arange(total)
        where = None
        if old is not None:
            where = (self.grid.pair_map(self.old_grid) if kind == "pairs"
                     else self.grid.member_map(self.old_grid))
            items = np.flatnonzero(where < 0)
        new = self._chunked(stage, items, chunk * per_cell, compute, desc)
        if old is None:
            return new
        out = {}
        for k in keys:
            ref = np.asarray(old[k])
            full = np.empty((total, *ref.shape[1:]), ref.dtype)
            full[where >= 0] = ref[where[where >= 0]]
            if len(items):
                full[items] = new[k]
            out[k] = full
        return out

    def _cells_per_chunk(self, per_cell: int, per_call: int = 1) -> int:
        """Cells per chunk: with a stacked strategy, enough that a chunk's items (``per_cell``
        each) fill whole compiled calls of ``per_call`` items spread over every device."""
        if not self.stacked:
            return 1
        unit = int(np.lcm(max(1, per_call), sharding.num_shards()))
        return min(self.grid.num_cells, int(unit // np.gcd(unit, per_cell)))

    def _take(self, tree, idx: np.ndarray):
        """Members ``idx`` of a stacked tree: sharded and padded with a stacked strategy, else
        one device array per leaf."""
        if self.stacked:
            return stages.take_members(tree, padded_idx(idx, True))
        return mem.take(tree, idx)

    def _done_before(self, stage: str, *chunk_stages: str):
        """The committed checkpoint of a finished measure stage (its leftover chunk records of a
        run killed right after the commit removed), or None."""
        out = self._restore(stage)
        if out is not None:
            self.say(f"{stage}: done before, loaded")
            for c in chunk_stages:
                self.wd.remove_chunks(c)
        return out

    def measure(self, retrained: dict) -> dict:
        out = self._done_before("measure", "outputs", "lmc")
        if out is not None:
            return out
        c, grid = self.cfg, self.grid
        R, ppc = len(grid.retrain_seeds), grid.pairs_per_cell
        pairs = grid.pairs_array()
        ts = np.linspace(0.0, 1.0, c.measure.lmc_points)
        V = retrained["variables"]
        n_cka = min(c.measure.cka_images, self.ds.num_train)
        P, T = len(pairs), len(ts)
        self.say(f"measure: LMC ({T} points, BN recalibrated on {self.ds.num_train} images) "
                 f"and CKA ({n_cka} images) for {P} pairs")
        t0 = time.time()
        Xc = self.X[:n_cka]
        old = self._old("measure")

        def outputs(pidx):  # CKA of pairs pidx, from the outputs of their members
            members, local = np.unique(pairs[pidx], return_inverse=True)
            local = local.reshape(-1, 2)
            if self.stacked:
                logits = stages.member_logits(self.mmodel, self._take(V, members), Xc,
                                              self.ds.mean, self.ds.std, c.run.eval_batch_size)
            else:
                logits = jnp.stack([landscape.evaluate(
                    self.mmodel, mem.take(V, i), Xc, self.Y[:n_cka],
                    self.ds.mean, self.ds.std, c.run.eval_batch_size,
                    return_logits=True)["logits"] for i in members])
            return stages.pair_cka(logits, local[:, 0], local[:, 1])

        out = self._per_item("outputs", "pairs", old, ("cka_softmax", "cka_logits"), ppc,
                             self._cells_per_chunk(R), outputs, "outputs for CKA (pairs)")
        per_call = landscape.resolve_points_per_call(c.measure.points_per_call)
        out.update(self._per_item(
            "lmc", "pairs", old, tuple(f"curve_{k}" for k in CURVE_KEYS), ppc,
            self._cells_per_chunk(ppc * T, per_call), self._curves(self._line_curves(V, ts)),
            "LMC (pairs)"))
        out["lmc"] = np.asarray(landscape.lmc(out["curve_train_error"], n=self.ds.num_train))
        out["loss_barrier"] = landscape.loss_barrier(out["curve_train_loss"])
        out["ts"] = ts
        self.say(f"measure: done in {time.time() - t0:.1f}s")
        self.wd.save("measure", out, note="(stage done)")
        self.wd.remove_chunks("outputs")
        self.wd.remove_chunks("lmc")
        return out

    @staticmethod
    def _curves(curves_of):
        return lambda pidx: {f"curve_{k}": v for k, v in curves_of(pidx).items()}

    def _line_curves(self, V, ts):
        c, pairs = self.cfg, self.grid.pairs_array()

        def curves(pidx):
            pa, pb = self._take(V, pairs[pidx, 0]), self._take(V, pairs[pidx, 1])
            res = landscape.pair_curves(
                self.mmodel, pa["params"], pb["params"],
                mem.take(pa["batch_stats"], 0), self.X, self.Y,
                mean=self.ds.mean, std=self.ds.std, ts=ts, bn_batch_size=c.measure.bn_batch_size,
                test=(self.Xt, self.Yt), eval_batch_size=c.run.eval_batch_size,
                points_per_call=c.measure.points_per_call or None)
            return {k: v[:len(pidx)] for k, v in res.items() if k in CURVE_KEYS}
        return curves

    # -- stage 4b: trained Bezier curves per pair (SPEC §2.3) -------------------------------------
    def bezier(self, retrained: dict) -> dict | None:
        bc = self.cfg.measure.bezier
        if not bc.enabled:
            return None
        out = self._done_before("bezier", "bezier")
        if out is not None:
            return out
        pairs, keys = self.grid.pairs_array(), self.grid.bezier_keys(self.root)
        ts = np.linspace(0.0, 1.0, bc.points)
        V, masks = retrained["variables"], retrained["mask"]
        self.say(f"bezier: {len(pairs)} curves x {bc.epochs} epochs (batch {bc.batch_size}), "
                 f"evaluated at {len(ts)} points")
        t0 = time.time()
        cpu = jax.default_backend() == "cpu"
        m = self.cfg.measure

        def curves(pidx):
            pa, pb = self._take(V, pairs[pidx, 0]), self._take(V, pairs[pidx, 1])
            mask = self._take(masks, pairs[pidx, 0])
            mid, _ = landscape.train_curves(
                self.mmodel, pa["params"], pb["params"], mask,
                mem.take(pa["batch_stats"], 0), self.X, self.Y,
                key=jnp.asarray(padded_idx(keys[pidx], self.stacked)), mean=self.ds.mean,
                std=self.ds.std, epochs=bc.epochs, batch_size=bc.batch_size, lr=bc.lr,
                weight_decay=bc.weight_decay, momentum=bc.momentum,
                chunk_steps=1 if cpu else None, unroll=cpu, strategy=self.strategy)
            res = landscape.curve_errors(
                self.mmodel, pa["params"], mid, pb["params"], self.X, self.Y, mean=self.ds.mean,
                std=self.ds.std, ts=ts, bn_batch_size=m.bn_batch_size, test=(self.Xt, self.Yt),
                eval_batch_size=self.cfg.run.eval_batch_size,
                points_per_call=m.points_per_call or None)
            return {k: v[:len(pidx)] for k, v in res.items() if k in CURVE_KEYS}

        per_call = landscape.resolve_points_per_call(m.points_per_call)
        ppc = self.grid.pairs_per_cell
        out = self._per_item("bezier", "pairs", self._old("bezier"),
                             tuple(f"curve_{k}" for k in CURVE_KEYS), ppc,
                             self._cells_per_chunk(ppc * len(ts), per_call), self._curves(curves),
                             "Bezier curves (pairs)")
        out["mc"] = np.asarray(landscape.mode_connectivity(out["curve_train_error"]))
        out["ts"] = ts
        self.say(f"bezier: done in {time.time() - t0:.1f}s")
        self.wd.save("bezier", out, note="(stage done)")
        self.wd.remove_chunks("bezier")
        return out

    # -- stage 4c: Hessian trace and top eigenvalue per retrained member (SPEC §2.5) ------------
    HESSIAN_KEYS = ("trace", "trace_stderr", "trace_probes", "top_eigenvalue")

    def hessian(self, retrained: dict) -> dict | None:
        hc = self.cfg.measure.hessian
        if not hc.enabled:
            return None
        res = self._done_before("hessian", "hessian")
        if res is not None:
            return res
        R = len(self.grid.retrain_seeds)
        n = min(hc.images, self.ds.num_train)
        self.say(f"hessian: trace (<= {hc.max_probes} probes, tol {hc.tol}) and top eigenvalue "
                 f"of {self.grid.num_members} members on {n} training images"
                 f"{', probes on unpruned weights' if hc.restrict_to_mask else ''}")
        t0 = time.time()
        V, masks, keys = retrained["variables"], retrained["mask"], self.grid.hessian_keys(self.root)
        X, Y = self.X[:n], self.Y[:n]
        opts = dict(mean=tuple(self.ds.mean), std=tuple(self.ds.std), max_probes=int(hc.max_probes),
                    chunk=int(hc.chunk), max_iters=int(hc.eig_iters), tol=float(hc.tol))

        def one(i):  # one member, the host loop (what pays on CPU)
            v = mem.take(V, i)
            m = mem.take(masks, i) if hc.restrict_to_mask else None
            r = landscape.member_hessian(self.mmodel, v, m, X, Y, jax.random.wrap_key_data(
                jnp.asarray(keys[i])), **opts)
            return np.asarray([r[k] for k in self.HESSIAN_KEYS], np.float64)

        def chunk(idx):
            if self.stacked:
                h = stages.hessian_members(self.mmodel, self._take(V, idx), self._take(masks, idx),
                                           X, Y, padded_idx(keys[idx], True),
                                           restrict_to_mask=bool(hc.restrict_to_mask), **opts)
                h = np.asarray(h, np.float64)[:len(idx)]
            else:
                h = np.stack([one(i) for i in idx])
            return {k: h[:, j] for j, k in enumerate(self.HESSIAN_KEYS)}

        res = self._per_item("hessian", "members", self._old("hessian"), self.HESSIAN_KEYS, R,
                             self._cells_per_chunk(R), chunk, "Hessian (members)")
        self.say(f"hessian: done in {time.time() - t0:.1f}s")
        self.wd.save("hessian", res, note="(stage done)")
        self.wd.remove_chunks("hessian")
        return res


"""The one executor of every plan: a breadth-first walk over the sigma grid.

At each grid index, every node that sits there (spine nodes, branch children, probes' ODE tails)
is evaluated in one batched velocity call (chunked to `max_batch`), then advanced by its rule.
Siblings share their parent's velocity, and so does any set of rows with the same state, sigma
and prompt (the roots of a share_noise group at the first step): each distinct row is computed
once. Classifier-free guidance lives inside the velocity function (one call per row), and NFE
counts one velocity evaluation per node per call, the sampler's cost model, whatever was shared.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

import torch

from .ode import DpmHistory, dpmpp_2m_step, euler_step, heun_step
from .plan import Plan
from .sde import SDE_FORMS, SdeStep, sde_step

# velocity(x [B, ...], sigma [B], prompt_index [B]) -> dx/dsigma [B, ...]
RolloutVelocity = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

SPINE, PROBE, TAIL = 0, 1, 2  # node kinds


@dataclass
class Transitions:
    """The SDE transitions of a rollout (M of them), with what training needs to re-score them.

    x, x_next: [M, ...] states before and after; sigma, sigma_next, logp, noise_level: [M];
    sde_form: [M] index into samplers.sde.SDE_FORMS; step: [M] grid index; parent, child: [M] node
    ids; prompt: [M] prompt index; trained: [M] bool; weight: [M] loss weight from the plan.
    """

    x: torch.Tensor
    x_next: torch.Tensor
    sigma: torch.Tensor
    sigma_next: torch.Tensor
    logp: torch.Tensor
    noise_level: torch.Tensor
    sde_form: torch.Tensor
    step: torch.Tensor
    parent: torch.Tensor
    child: torch.Tensor
    prompt: torch.Tensor
    trained: torch.Tensor
    weight: torch.Tensor

    def __len__(self) -> int:
        return self.logp.shape[0]

    def select(self, index: torch.Tensor) -> Transitions:
        """The transitions at `index` (a LongTensor or bool mask)."""
        return Transitions(**{name: getattr(self, name)[index] for name in self.__dataclass_fields__})


@dataclass
class Rollout:
    """Everything a rollout produced.

    samples: [N, ...] final states (at sigma 0), one per leaf. For each sample: sample_node [N],
    prompt [N] (the group for prompt-level normalisation), root [N] (the initial noise it grew
    from), probe [N] (node id of the probe it finishes, -1 for spine leaves), probe_step [N] (the
    grid index where that probe left the spine, -1 for spine leaves) and tail [N]
    (index into plan.tails, -1 for spine leaves).
    The tree: node_parent [K] (-1 for roots), node_index [K] (grid index of the node's state),
    node_kind [K] (SPINE, PROBE, TAIL), node_root [K], node_prompt [K].
    nfe: velocity evaluations (one per node per call; with guidance each is one batched row pair).
    """

    samples: torch.Tensor
    sample_node: torch.Tensor
    prompt: torch.Tensor
    root: torch.Tensor
    probe: torch.Tensor
    probe_step: torch.Tensor
    tail: torch.Tensor
    node_parent: torch.Tensor
    node_index: torch.Tensor
    node_kind: torch.Tensor
    node_root: torch.Tensor
    node_prompt: torch.Tensor
    transitions: Transitions
    nfe: int
    plan: Plan = field(repr=False)

    @property
    def reward_mask(self) -> torch.Tensor:
        """[N] bool: the samples credit uses (with probes, the spine's own leaves are not scored)."""
        if bool((self.probe >= 0).any()):
            return self.probe >= 0
        return torch.ones_like(self.probe, dtype=torch.bool)

    @property
    def trained(self) -> Transitions:
        """Only the transitions the plan trains."""
        return self.transitions.select(self.transitions.trained)


@dataclass
class _Front:
    """Nodes waiting at one grid index: states and per-node bookkeeping."""

    x: torch.Tensor
    node: torch.Tensor
    tail: torch.Tensor  # -1 for spine nodes
    history: DpmHistory | None

    @staticmethod
    def cat(parts: list[_Front]) -> _Front:
        histories = [p.history for p in parts]
        history = None
        if any(h is not None for h in histories):
            # A node without history yet (first step of a DPM stretch) gets sigma = 1: first order.
            x0 = torch.cat([h.x0 if h is not None else torch.zeros_like(p.x) for h, p in zip(histories, parts)])
            sig = torch.cat(
                [
                    h.sigma if h is not None else torch.ones(len(p.node), dtype=p.x.dtype, device=p.x.device)
                    for h, p in zip(histories, parts)
                ]
            )
            history = DpmHistory(x0, sig)
        return _Front(
            torch.cat([p.x for p in parts]),
            torch.cat([p.node for p in parts]),
            torch.cat([p.tail for p in parts]),
            history,
        )

    def take(self, mask: torch.Tensor) -> _Front:
        history = None if self.history is None else DpmHistory(self.history.x0[mask], self.history.sigma[mask])
        return _Front(self.x[mask], self.node[mask], self.tail[mask], history)


class _Tree:
    """Append-only node table."""

    def __init__(self) -> None:
        self.parent: list[torch.Tensor] = []
        self.index: list[torch.Tensor] = []
        self.kind: list[torch.Tensor] = []
        self.root: list[torch.Tensor] = []
        self.prompt: list[torch.Tensor] = []
        self.size = 0
        self._root_of = torch.empty(0, dtype=torch.long)
        self._prompt_of = torch.empty(0, dtype=torch.long)

    def add(
        self,
        parent: torch.Tensor,
        index: int,
        kind: int,
        root: torch.Tensor | None = None,
        prompt: torch.Tensor | None = None,
    ) -> torch.Tensor:
        n = parent.shape[0]
        ids = torch.arange(self.size, self.size + n)
        if root is None:
            root, prompt = self._root_of[parent], self._prompt_of[parent]
        self.parent.append(parent)
        self.index.append(torch.full((n,), index))
        self.kind.append(torch.full((n,), kind))
        self.root.append(root)
        self.prompt.append(prompt)
        self._root_of = torch.cat([self._root_of, root])
        self._prompt_of = torch.cat([self._prompt_of, prompt])
        self.size += n
        return ids

    def prompt_of(self, nodes: torch.Tensor) -> torch.Tensor:
        return self._prompt_of[nodes]

    def root_of(self, nodes: torch.Tensor) -> torch.Tensor:
        return self._root_of[nodes]

    def index_of(self, nodes: torch.Tensor) -> torch.Tensor:
        return torch.cat(self.index)[nodes]


def _chunked_velocity(
    velocity: RolloutVelocity, x: torch.Tensor, sigma: torch.Tensor, prompt: torch.Tensor, max_batch: int
) -> torch.Tensor:
    return torch.cat(
        [
            velocity(x[i : i + max_batch], sigma[i : i + max_batch], prompt[i : i + max_batch])
            for i in range(0, x.shape[0], max_batch)
        ]
    )


@lru_cache(maxsize=8)
def _projection(numel: int, device: torch.device) -> torch.Tensor:
    """A fixed random direction to fingerprint states of `numel` elements (made once per size and
    device: every grid index of every rollout asks for it)."""
    return torch.randn(numel, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(device)


def distinct_rows(x: torch.Tensor, sigma: torch.Tensor, prompt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(first, inverse): one row index per distinct (state, sigma, prompt) and, for every row, the
    position of its representative in `first`, so v computed on rows `first` serves all as v[inverse].

    Rows are grouped by a random projection of their state and then checked element by element
    against their representative, so only exactly equal rows share (a collision keeps its own).
    """
    n = x.shape[0]
    flat = x.reshape(n, -1)
    keys = torch.stack(
        [
            flat.double() @ _projection(flat.shape[1], x.device),
            sigma.to(x.device).double().expand(n),
            prompt.to(x.device).double(),
        ],
        1,
    )
    unique_keys, inverse = torch.unique(keys, dim=0, return_inverse=True)
    rows = torch.arange(n, device=x.device)
    first = torch.full((len(unique_keys),), n, dtype=torch.long, device=x.device).scatter_reduce(
        0, inverse, rows, reduce="amin"
    )
    same = (flat == flat[first[inverse]]).all(1)
    if not bool(same.all()):
        first, inverse = torch.unique(torch.where(same, first[inverse], rows), return_inverse=True)
    return first, inverse


def _shared_velocity(
    velocity: RolloutVelocity, x: torch.Tensor, sigma: torch.Tensor, prompt: torch.Tensor, max_batch: int
) -> torch.Tensor:
    """The velocity of every row, each distinct (state, sigma, prompt) computed once."""
    first, inverse = distinct_rows(x, sigma, prompt)
    if len(first) == x.shape[0]:
        return _chunked_velocity(velocity, x, sigma, prompt, max_batch)
    return _chunked_velocity(velocity, x[first], sigma[first], prompt[first], max_batch)[inverse]


@torch.no_grad()
def rollout(
    velocity: RolloutVelocity,
    plan: Plan,
    num_prompts: int,
    sample_shape: tuple[int, ...],
    seed: int = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    max_batch: int = 256,
    noise: torch.Tensor | None = None,
    root_prompt: torch.Tensor | None = None,
    root_seeds: list[int] | None = None,
) -> Rollout:
    """Execute `plan` for `num_prompts` prompts with plan.group_size roots each.

    All randomness comes from one CPU generator seeded with `seed`, drawn in a fixed order, so the
    same seed gives the same rollout bit for bit. `noise` ([roots, *shape]) overrides the initial
    noise. For sharding a batch over processes: `root_prompt` ([R], prompt index of each root)
    replaces the num_prompts x group_size layout, so a process may hold part of a group, and
    `root_seeds` ([R]) gives each root its own generator, so a root's noise (initial and SDE) does
    not depend on which other roots share the call (share_noise then needs `noise`).
    """
    if num_prompts < 1 or max_batch < 1:
        raise ValueError(f"num_prompts and max_batch must be positive, got {num_prompts} and {max_batch}")
    if root_prompt is None:
        root_prompt = torch.arange(num_prompts).repeat_interleave(plan.group_size)
    root_prompt = torch.as_tensor(root_prompt, dtype=torch.long).cpu()
    roots = len(root_prompt)
    if roots == 0 or int(root_prompt.min()) < 0 or int(root_prompt.max()) >= num_prompts:
        raise ValueError(
            f"root_prompt must be non-empty prompt indices in [0, {num_prompts}), got {root_prompt.tolist()[:16]}"
        )
    generator = torch.Generator().manual_seed(int(seed))
    generators = None
    if root_seeds is not None:
        if len(root_seeds) != roots:
            raise ValueError(f"root_seeds has {len(root_seeds)} seeds for {roots} roots")
        if plan.share_noise and noise is None:
            raise ValueError("share_noise with root_seeds needs the shared initial noise passed as `noise`")
        generators = [torch.Generator().manual_seed(int(s)) for s in root_seeds]

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, *sample_shape, generator=generator).to(device=device, dtype=torch.float32)

    def randn_rows(root_of_row: torch.Tensor, *shape: int) -> torch.Tensor:
        """[n, *shape, *sample_shape] noise; with per-root generators each row draws from its root's."""
        if generators is None:
            return randn(len(root_of_row), *shape)
        draws = [torch.randn(*shape, *sample_shape, generator=generators[r]) for r in root_of_row.tolist()]
        return torch.stack(draws).to(device=device, dtype=torch.float32)

    sigmas = plan.sigmas.to(device=device, dtype=torch.float32)
    last = plan.num_steps
    root_ids = torch.arange(roots)
    if noise is None:
        if plan.share_noise:
            first = torch.unique(root_prompt)
            noise = randn(len(first))[torch.searchsorted(first, root_prompt)]
        else:
            noise = randn_rows(root_ids)
    if noise.shape != (roots, *sample_shape):
        raise ValueError(f"initial noise must have shape {(roots, *sample_shape)}, got {tuple(noise.shape)}")

    tree = _Tree()
    nodes = tree.add(torch.full((roots,), -1), 0, SPINE, root=root_ids, prompt=root_prompt)
    waiting: dict[int, list[_Front]] = {
        0: [_Front(noise.to(device=device, dtype=dtype), nodes, torch.full((roots,), -1), None)]
    }
    finished: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (x, node, tail)
    records: list[dict[str, torch.Tensor]] = []
    probe_of_node: dict[int, int] = {}
    nfe = 0

    def arrive(index: int, front: _Front) -> None:
        if len(front.node) == 0:
            return
        if index == last:
            finished.append((front.x, front.node, front.tail))
        else:
            waiting.setdefault(index, []).append(front)

    def record(x, step: SdeStep, j: int, spec, parent, child, trained: bool, sigma_next=None, level=None) -> None:
        """Store transitions x -> step.sample at grid step j (by default to the next grid point, at the spec's noise level)."""
        m = x.shape[0]
        records.append(
            dict(
                x=x,
                x_next=step.sample,
                sigma=sigmas[j].expand(m),
                sigma_next=(sigmas[j + 1] if sigma_next is None else sigma_next).expand(m),
                logp=step.logp,
                noise_level=torch.full((m,), spec.level() if level is None else level, device=device),
                sde_form=torch.full((m,), SDE_FORMS.index(spec.sde), device=device),
                step=torch.full((m,), j, device=device),
                parent=parent.to(device),
                child=child.to(device),
                prompt=tree.prompt_of(parent).to(device),
                trained=torch.full((m,), trained, device=device),
                weight=torch.full((m,), spec.weight, device=device),
            )
        )

    def sde_children(x, v, j: int, spec, k: int, nodes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, SdeStep]:
        """k SDE children of each of the n rows of x (at tree `nodes`), sharing its velocity:
        ([n*k, ...] x, v, step)."""
        roots_of_rows = tree.root_of(nodes)
        if k > 1 and plan.split_noise_scale is not None and plan.split_noise == "correlated":
            # Each child is still N(0, I); siblings are correlated through the shared xi_0.
            shared, own = randn_rows(roots_of_rows), randn_rows(roots_of_rows, k)
            s = plan.split_noise_scale
            eps = (shared.unsqueeze(1) + s * own) / math.sqrt(1 + s * s)
        elif k > 1 and plan.split_noise_scale is not None:
            # BranchGRPO's code: independent noise times s; the log-prob keeps the step's std.
            eps = plan.split_noise_scale * randn_rows(roots_of_rows, k)
        else:
            eps = randn_rows(roots_of_rows, k)
        xs, vs = x.repeat_interleave(k, 0), v.repeat_interleave(k, 0)
        step = sde_step(vs, xs, sigmas[j], sigmas[j + 1], spec.sde, spec.level(), noise=eps.flatten(0, 1))
        return xs, vs, step

    def left_by(step: SdeStep, history: DpmHistory, j: int) -> torch.Tensor:
        """The state an SDE step leaves: its sample, or into sigma 0 with plan.final == "clean" the
        clean estimate (its transition keeps the sample)."""
        return history.x0.to(step.sample.dtype) if j + 1 == last and plan.final == "clean" else step.sample

    def data_history(x: torch.Tensor, v: torch.Tensor, j: int) -> DpmHistory:
        """The data prediction x - sigma v at grid step j, which a later DPM-Solver++ step reads
        (MixGRPO-Flash keeps the solver's history through its SDE window)."""
        return DpmHistory(x - sigmas[j] * v, sigmas[j].expand(x.shape[0]).to(x.dtype).clone())

    for j in range(last):
        if j not in waiting:
            continue
        front = _Front.cat(waiting.pop(j))
        n = len(front.node)
        sigma = sigmas[j].expand(n)
        prompts = tree.prompt_of(front.node).to(device)
        v = _shared_velocity(velocity, front.x, sigma, prompts, max_batch)
        nfe += n
        spine = front.tail < 0
        # ODE updates of spine ODE steps and of every tail, with their landing grid index.
        ode_rows, ode_next, ode_solver = [], [], []
        if bool(spine.any()):
            spec = plan.steps[j]
            sp = front.take(spine)
            v_sp = v[spine.to(device)]
            if spec.probes > 0:
                xs, vs, step = sde_children(sp.x, v_sp, j, spec, spec.probes, sp.node)
                parents = sp.node.repeat_interleave(spec.probes)
                probes = tree.add(parents, j + 1, PROBE)
                for p in probes.tolist():
                    probe_of_node[p] = p
                record(xs, step, j, spec, parents, probes, spec.trained)
                for t in range(len(plan.tails)):
                    # Each tail continues its own copy of the probe (multi-granularity finishes).
                    tails = probes if len(plan.tails) == 1 else tree.add(probes, j + 1, TAIL)
                    if len(plan.tails) > 1:
                        for p, q in zip(probes.tolist(), tails.tolist()):
                            probe_of_node[q] = p
                    history = data_history(xs, vs, j)
                    arrive(j + 1, _Front(left_by(step, history, j), tails, torch.full((len(tails),), t), history))
            if spec.mode == "sde":
                xs, vs, step = sde_children(sp.x, v_sp, j, spec, spec.branch, sp.node)
                parents = sp.node.repeat_interleave(spec.branch)
                children = tree.add(parents, j + 1, SPINE)
                record(xs, step, j, spec, parents, children, spec.trained)
                history = data_history(xs, vs, j)
                arrive(j + 1, _Front(left_by(step, history, j), children, torch.full((len(children),), -1), history))
            else:
                ode_rows.append(torch.nonzero(spine).flatten())
                ode_next.append(torch.full((int(spine.sum()),), plan.next_index(j)))
                ode_solver.append([spec.solver] * int(spine.sum()))
        tail_rows = torch.nonzero(~spine).flatten()
        if len(tail_rows):
            starts = tree.index_of(torch.tensor([probe_of_node[int(n)] for n in front.node[tail_rows]]))
            targets = [
                plan.tails[t].next_index(j, int(start), last)
                for t, start in zip(front.tail[tail_rows].tolist(), starts.tolist())
            ]
            ode_rows.append(tail_rows)
            ode_next.append(torch.tensor(targets, dtype=torch.long))
            ode_solver.append([plan.tails[t].solver for t in front.tail[tail_rows].tolist()])
        if not ode_rows:
            continue
        rows, next_index = torch.cat(ode_rows), torch.cat(ode_next)
        solvers = [s for part in ode_solver for s in part]
        x, vv = front.x[rows.to(device)], v[rows.to(device)]
        s_next = sigmas[next_index.to(device)]
        x_next = euler_step(vv, x, sigmas[j], s_next)  # Euler everywhere, refined below
        heun = torch.tensor([s == "heun" for s in solvers], dtype=torch.bool)
        if bool(heun.any()):
            hd = heun.to(device)
            v_pred = _chunked_velocity(
                velocity, x_next[hd], s_next[hd], tree.prompt_of(front.node[rows][heun]).to(device), max_batch
            )
            nfe += int(heun.sum())
            x_next[hd] = heun_step(vv[hd], v_pred, x[hd], sigmas[j], s_next[hd])
        dpm = torch.tensor([s == "dpmpp_2m" for s in solvers], dtype=torch.bool)
        if bool(dpm.any()):
            dd = dpm.to(device)
            history = None
            if front.history is not None:
                history = DpmHistory(front.history.x0[rows.to(device)][dd], front.history.sigma[rows.to(device)][dd])
            x_next[dd], _ = dpmpp_2m_step(vv[dd], x[dd], sigmas[j], s_next[dd], history)
        new_history = data_history(x, vv, j)
        parents = front.node[rows]
        tails = front.tail[rows]
        spec = plan.steps[j]
        record_ode = spec.trained and spec.mode == "ode" and spec.probes == 0  # deterministic trained steps
        for target in torch.unique(next_index).tolist():
            sel = next_index == target
            kinds_are_tail = tails[sel] >= 0
            ids = torch.empty(int(sel.sum()), dtype=torch.long)
            if bool((~kinds_are_tail).any()):
                ids[~kinds_are_tail] = tree.add(parents[sel][~kinds_are_tail], target, SPINE)
            if bool(kinds_are_tail.any()):
                tail_parents = parents[sel][kinds_are_tail]
                ids[kinds_are_tail] = tree.add(tail_parents, target, TAIL)
                for p, q in zip(tail_parents.tolist(), ids[kinds_are_tail].tolist()):
                    probe_of_node[q] = probe_of_node[p]
            sd = sel.to(device)
            if record_ode and bool((~kinds_are_tail).any()):
                spine_rows = sd.clone()
                spine_rows[sd] = (~kinds_are_tail).to(device)
                m = int(spine_rows.sum())
                step = SdeStep(
                    x_next[spine_rows],
                    torch.full((m,), torch.nan, device=device),
                    x_next[spine_rows],
                    torch.zeros(m, device=device),
                )
                record(
                    x[spine_rows],
                    step,
                    j,
                    spec,
                    parents[sel][~kinds_are_tail],
                    ids[~kinds_are_tail],
                    True,
                    sigma_next=sigmas[target],
                    level=0.0,
                )
            hist = DpmHistory(new_history.x0[sd], new_history.sigma[sd])
            arrive(target, _Front(x_next[sd], ids, tails[sel], hist))

    samples = torch.cat([f[0] for f in finished])
    sample_node = torch.cat([f[1] for f in finished])
    sample_tail = torch.cat([f[2] for f in finished])
    node_root = torch.cat(tree.root)
    node_index = torch.cat(tree.index)
    probe = torch.tensor([probe_of_node.get(int(n), -1) for n in sample_node], dtype=torch.long)
    transitions = (
        Transitions(**{k: torch.cat([r[k] for r in records]) for k in records[0]})
        if records
        else _no_transitions(sample_shape, device, dtype)
    )
    return Rollout(
        samples=samples,
        sample_node=sample_node,
        prompt=tree.prompt_of(sample_node),
        root=node_root[sample_node],
        probe=probe,
        probe_step=torch.where(probe >= 0, node_index[probe.clamp_min(0)] - 1, -1),
        tail=sample_tail,
        node_parent=torch.cat(tree.parent),
        node_index=node_index,
        node_kind=torch.cat(tree.kind),
        node_root=node_root,
        node_prompt=torch.cat(tree.prompt),
        transitions=transitions,
        nfe=nfe,
        plan=plan,
    )


def _no_transitions(sample_shape, device, dtype) -> Transitions:
    empty = torch.empty(0, device=device)
    states = torch.empty(0, *sample_shape, device=device, dtype=dtype)
    long = empty.long()
    return Transitions(states, states, empty, empty, empty, empty, long, long, long, long, long, empty.bool(), empty)


def score_transitions(velocity: RolloutVelocity, transitions: Transitions, max_batch: int = 256) -> SdeStep:
    """Re-score stored transitions under the current velocity (with grad if enabled).

    Returns the SdeStep of each transition (logp, mean, std) with the stored x_next. Transitions
    from the same state (siblings, a share_noise group's first steps) share one velocity
    evaluation, as in the rollout.
    """
    v = _shared_velocity(velocity, transitions.x, transitions.sigma, transitions.prompt, max_batch)
    logp = torch.empty(len(transitions), device=v.device)
    mean = torch.empty_like(transitions.x_next, dtype=torch.float32)
    std = torch.empty(len(transitions), device=v.device)
    parts = []
    for form_index, form in enumerate(SDE_FORMS):
        sel = transitions.sde_form == form_index
        if not bool(sel.any()):
            continue
        step = sde_step(
            v[sel],
            transitions.x[sel],
            transitions.sigma[sel],
            transitions.sigma_next[sel],
            form,
            transitions.noise_level[sel],
            x_next=transitions.x_next[sel],
        )
        parts.append((sel, step))
    if len(parts) == 1:
        return parts[0][1]
    # Mixed forms: scatter back in order (differentiably through index_put on fresh tensors).
    for sel, step in parts:
        logp = logp.index_put((torch.nonzero(sel).flatten(),), step.logp)
        mean = mean.index_put((torch.nonzero(sel).flatten(),), step.mean)
        std = std.index_put((torch.nonzero(sel).flatten(),), step.std)
    return SdeStep(transitions.x_next, logp, mean, std)

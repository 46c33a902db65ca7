"""Back-propagation through a rollout of segments: BPTT, checkpointed BPTT and MRBP.

All three take a model with `body(tokens, state, padding_mask) -> (hidden, state)`
and an output head with `log_prob` (memkernels.models), a list of `Segment`s and
the initial state; they accumulate the gradient of the rollout loss (summed
target negative log-likelihood over the number of target tokens) into the
parameters and return `(loss, final state detached)`. Each fetches what the
loss needs from the host once, before the rollout, and reads the loss back once,
at the end: no host sync per segment.

* `bptt` keeps the whole rollout's graph: fastest, memory grows with length.
* `checkpointed_bptt` recomputes each step in the backward pass
  (`torch.utils.checkpoint`), keeping only step inputs.
* `mrbp` is Memory Replay Back-Propagation (paper Algorithm 1), for models with
  `advance(tokens, state, padding_mask) -> state` (Memformer): a forward pass
  with no graph that runs only the memory path (`advance`: embedding, encoder,
  writer; no decoder, no head) and keeps the states and RNG states; then, from
  the last segment to the first, a replay of the whole step with its RNG state
  restored (so dropout matches) and one backward of its loss together with the
  incoming state gradient. Only one step's graph is alive at a time. Its
  gradients equal BPTT's up to floating-point summation order.
"""
import torch
from torch.utils.checkpoint import checkpoint

from memkernels.models.segments import loss_plan, rollout_loss, segment_loss


def _detached(state):
    return type(state)(*(t.detach() for t in state))


def bptt(model, segments, state):
    loss, state = rollout_loss(model, segments, state)
    loss.backward()
    return loss.item(), _detached(state)


def checkpointed_bptt(model, segments, state):
    plan = loss_plan(model, segments)

    def run(seg, counts, *fields):
        hidden, new_state = model.body(seg.inputs, type(state)(*fields), seg.padding_mask)
        return (segment_loss(model, hidden, seg.targets, counts, plan.total), *new_state)

    loss = 0.0
    for seg, counts in zip(segments, plan.counts):
        seg_loss, *fields = checkpoint(run, seg, counts, *state, use_reentrant=False, preserve_rng_state=True)
        state = type(state)(*fields)
        loss = loss + seg_loss
    loss.backward()
    return loss.item(), _detached(state)


def _rng_state(device):
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(saved, device):
    cpu, cuda = saved
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, device)


def mrbp(model, segments, state):
    device = segments[0].inputs.device
    plan = loss_plan(model, segments)
    initial = state
    replay = [_detached(state)]
    rng_states = []
    with torch.no_grad():
        for seg in segments:
            rng_states.append(_rng_state(device))
            replay.append(model.advance(seg.inputs, replay[-1], seg.padding_mask))
    after_forward = _rng_state(device)

    loss = 0.0
    state_grads = None
    for t in reversed(range(len(segments))):
        inputs = type(state)(*(s.detach().requires_grad_(s.is_floating_point()) for s in replay[t]))
        _set_rng_state(rng_states[t], device)
        hidden, next_state = model.body(segments[t].inputs, inputs, segments[t].padding_mask)
        seg_loss = segment_loss(model, hidden, segments[t].targets, plan.counts[t], plan.total)
        outputs, grads = [seg_loss], [None]
        if state_grads is not None:
            carried = [(o, g) for o, g in zip(next_state, state_grads) if g is not None and o.requires_grad]
            outputs += [o for o, _ in carried]
            grads += [g for _, g in carried]
        torch.autograd.backward(outputs, grads)
        state_grads = [s.grad for s in inputs]
        loss = loss + seg_loss.detach()
    carried = [(s, g) for s, g in zip(initial, state_grads) if g is not None and s.requires_grad]
    if carried:
        torch.autograd.backward([s for s, _ in carried], [g for _, g in carried])
    _set_rng_state(after_forward, device)
    return loss.item(), replay[-1]

"""The recurrent memory models train under DistributedDataParallel (2 CPU processes, gloo)
exactly like one process on the whole batch: Memformer, the key-value memory and the DNC."""
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from memkernels.models import DNCConfig, DNCTransformer, KVMemoryConfig, KVMemoryTransformer, Memformer, memformer_mnist

VOCAB, SEG, WORLD, STEPS = 17, 4, 2, 2
KINDS = ("memformer", "kv-memory", "dnc")


def _model(kind):
    torch.manual_seed(0)
    if kind == "memformer":
        return Memformer(memformer_mnist(vocab_size=VOCAB, d_model=24, n_heads=2, d_ff=48, n_encoder_layers=1,
                                         n_decoder_layers=1, n_slots=4, dropout=0.0, backend="torch")).double()
    common = dict(vocab_size=VOCAB, d_model=8, n_heads=2, d_ff=16, n_layers=2, dropout=0.0, backend="torch")
    if kind == "kv-memory":
        model = KVMemoryTransformer(KVMemoryConfig(capacity=6, top_k=2, chunk_size=4, **common))
    else:
        model = DNCTransformer(DNCConfig(n_slots=4, slot_width=4, n_reads=2, entropy_weight=0.1, **common))
    return model.double()


def _train(model, batches):
    """Two SGD steps; returns the first step's gradients and the final parameters."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    first_grads = None
    for tokens in batches:
        optimizer.zero_grad()
        model(tokens, SEG).backward()
        if first_grads is None:
            first_grads = [p.grad.clone() for p in model.parameters()]
        optimizer.step()
    return first_grads, [p.detach().clone() for p in model.parameters()]


def _worker(rank, port, batches, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        shard = [tokens[rank::WORLD] for tokens in batches]
        for kind in KINDS:  # one spawn for every model: starting the processes is most of the time
            ddp = DistributedDataParallel(_model(kind))
            torch.save(_train(ddp, shard), os.path.join(out_dir, f"{kind}-rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_match_one_process_on_the_whole_batch(tmp_path):
    torch.manual_seed(1)
    batches = [torch.randint(0, VOCAB, (4, 3 * SEG + 1)) for _ in range(STEPS)]
    mp.spawn(_worker, args=(_free_port(), batches, str(tmp_path)), nprocs=WORLD, join=True)
    for kind in KINDS:
        grads, params = _train(_model(kind), batches)
        for rank in range(WORLD):
            ddp_grads, ddp_params = torch.load(tmp_path / f"{kind}-rank{rank}.pt")
            for got, want in zip(ddp_grads, grads):
                torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10, msg=kind)
            for got, want in zip(ddp_params, params):
                torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10, msg=kind)

"""Multi-process training through RecBole's DDP path, on GPUs (NCCL) or CPUs (gloo).

    python run_recbole_llm.py --model=LLMMTL --dataset=amazon --nproc=2
    # several machines: same command on each, with --world_size, --ip, --port, --group_offset

Each process trains on its shard of every batch (RecBole's DistributedSampler) and the
gradients are all-reduced. The text-encoding pass is sharded too: every rank encodes its
slice of the texts, the slices are gathered, and only rank 0 writes the cache.
"""

import gc

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from recbole_llm_mtl.text.cache import content_key


def is_distributed():
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def init_process_group(config_dict):
    """Start the process group for a RecBole config dict (``local_rank``, ``offset``,
    ``world_size``, ``ip``, ``port``); returns the device this rank trains on."""
    use_cuda = torch.cuda.is_available() and str(config_dict.get("gpu_id", "")) != "" and config_dict.get("use_gpu", True)
    dist.init_process_group(
        backend="nccl" if use_cuda else "gloo",
        rank=config_dict["local_rank"] + config_dict["offset"],
        world_size=config_dict["world_size"],
        init_method=f"tcp://{config_dict['ip']}:{config_dict['port']}",
    )
    if use_cuda:
        torch.cuda.set_device(config_dict["local_rank"])
        return torch.device("cuda", config_dict["local_rank"])
    return torch.device("cpu")


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank (no-op outside DDP)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier():
    if is_distributed():
        dist.barrier()


def close_process_group():
    """Leave the process group after a finished run: a barrier first, so no rank tears down
    its connections (rank 0 also hosts the TCP store) while a peer still talks to it. The
    trainer's DDP wrapper holds the gloo connections too: collected here, not at exit."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    gc.collect()
    barrier()
    dist.destroy_process_group()


def sharded_cached_encode(cache, identity, texts, encode_fn):
    """:func:`cached_encode` for several ranks: one cache decision (rank 0's), each rank
    encodes ``texts[rank::world]``, the slices are gathered, rank 0 writes the cache."""
    rank, world = dist.get_rank(), dist.get_world_size()
    key = content_key(identity, texts)
    vectors = cache.load(key) if (cache is not None and rank == 0) else None
    if broadcast_object(vectors is not None):
        if rank != 0:
            vectors = cache.load(key)
        barrier()
        return vectors, True
    mine = encode_fn(texts[rank::world])
    parts = [None] * world
    dist.all_gather_object(parts, mine)
    vectors = torch.empty(len(texts), parts[0].shape[1])
    for r, part in enumerate(parts):
        vectors[r::world] = part
    if rank == 0 and cache is not None:
        cache.save(key, vectors, {"n_texts": len(texts), **identity})
    barrier()
    return vectors, False


def _worker(local_rank, model, dataset, config_files, overrides, resume, evaluate_test, queue):
    from recbole_llm_mtl.quick_start import run

    overrides = dict(overrides, local_rank=local_rank)
    result = run(model, dataset, config_files, config_dict=overrides, resume=resume, evaluate_test=evaluate_test)
    # on success only: after an error a peer may be stuck in a collective (NCCL's destroy
    # would wait for it), and spawn has the traceback already
    close_process_group()
    queue.put((local_rank, {k: result[k] for k in ("best_valid_result", "test_result", "checkpoint")}))


def run_distributed(args, config_files, overrides):
    """Spawn ``args.nproc`` processes on this machine (ranks offset by ``group_offset``);
    returns each local rank's results, in rank order."""
    world = args.world_size if args.world_size > 0 else args.nproc
    dist_keys = {"nproc": args.nproc, "world_size": world, "ip": args.ip, "port": str(args.port),
                 "offset": args.group_offset}
    queue = mp.get_context("spawn").SimpleQueue()
    evaluate_test = not getattr(args, "valid_only", False)  # --valid_only never reads test, on any rank
    mp.spawn(_worker, args=(args.model, args.dataset, config_files, {**overrides, **dist_keys}, args.resume,
                            evaluate_test, queue), nprocs=args.nproc, join=True)
    results = []
    while not queue.empty():
        results.append(queue.get())
    return [r for _, r in sorted(results, key=lambda x: x[0])]

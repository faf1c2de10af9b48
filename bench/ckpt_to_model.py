#!/usr/bin/env python3
"""Builds a self-describing model file from a trainer checkpoint: the graph and metadata of
MODEL (a model saved by shears), the `model.*` tensors of CKPT (`checkpoint.safetensors` or the
older `finetune.safetensors`). Used for the epoch-9 row of docs/results/recovery.md.

    python3 bench/ckpt_to_model.py MODEL CKPT OUT
"""
import json, struct, sys
def read(p):
    f = open(p, 'rb'); n = struct.unpack('<Q', f.read(8))[0]
    h = json.loads(f.read(n)); data = f.read(); return h, data
mh, _ = read(sys.argv[1]); ch, cdata = read(sys.argv[2])
meta = mh.get('__metadata__', {})
out_h = {'__metadata__': meta}; blobs = []; off = 0
for k, v in ch.items():
    if k == '__metadata__' or not k.startswith('model.'): continue
    name = k[len('model.'):]
    assert name in mh, name
    s, e = v['data_offsets']; b = cdata[s:e]
    out_h[name] = {'dtype': v['dtype'], 'shape': v['shape'], 'data_offsets': [off, off + len(b)]}
    blobs.append(b); off += len(b)
missing = [k for k in mh if k != '__metadata__' and k not in out_h]
assert not missing, missing
hb = json.dumps(out_h).encode(); hb += b' ' * ((8 - len(hb) % 8) % 8)
with open(sys.argv[3], 'wb') as f:
    f.write(struct.pack('<Q', len(hb))); f.write(hb); [f.write(b) for b in blobs]

// The member table (src/backend.rs: Dropout, Segments), for the families whose kernels read
// it: the loader (src/gpu/shaders.rs) puts this file after common.wgsl in front of them. It
// holds u32 words: seed32 of member k at word k, and the per-member rates at the offsets the
// kernels' parameters give (f32 bits). Every kernel of such a family binds it, at binding 7.

@group(0) @binding(7) var<storage, read> members: array<u32>;

// The f32 at word `at`.
fn member_f32(at: u32) -> f32 {
    return bitcast<f32>(members[at]);
}

// Inverted dropout of element i of a batch buffer shared by `count` members, `len` elements
// per example and member (backend::Dropout): element j of member k's own buffer, under k's
// key (rng::op_key of its seed, `stream` and `step`), kept when draw(key, j) >= p_k.
fn member_dropout(y: f32, i: u32, count: u32, len: u32, stream: u32, step: u32, at: u32) -> f32 {
    let k = (i / len) % count;
    let j = (i / (len * count)) * len + i % len;
    let key = mix32(mix32(members[k] ^ stream) ^ step);
    return select(0.0, y * member_f32(at + count + k), draw(key, j) >= member_f32(at + k));
}

// The dropout scale 1 / (1 - p_k) of element i's member.
fn member_dropout_scale(i: u32, count: u32, len: u32, at: u32) -> f32 {
    return member_f32(at + count + (i / len) % count);
}

// The member element i of a flat parameter buffer belongs to (backend::Segments): the last
// segment starting at or before i, then its member by the per-member length, at most
// count - 1 (alignment padding).
fn member_of(i: u32, segs: u32, count: u32) -> u32 {
    var lo = 0u;
    var hi = members[segs];
    while lo < hi {
        let mid = (lo + hi) / 2u;
        if members[segs + 1u + 2u * mid] <= i {
            lo = mid + 1u;
        } else {
            hi = mid;
        }
    }
    if lo == 0u {
        return 0u;
    }
    let start = members[segs + 2u * lo - 1u];
    let len = max(members[segs + 2u * lo], 1u);
    return min((i - start) / len, count - 1u);
}

// The forward epilogue of conv2d and dense: activation, then (after relu only) inverted
// dropout with dropout_forward's mask for output element `idx` of the batch buffer.
fn epilogue(v: f32, act: u32, idx: u32, has_dropout: u32, count: u32, len: u32, stream: u32, step: u32, at: u32) -> f32 {
    let y = act_apply(v, act);
    if has_dropout == 1u {
        return member_dropout(y, idx, count, len, stream, step, at);
    }
    return y;
}

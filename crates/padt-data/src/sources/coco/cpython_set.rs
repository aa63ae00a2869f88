//! The iteration order of a CPython (3.7-3.13) `set` of Python ints.
//!
//! PaDT iterates sets in two places that decide output order: `process_coco.py` builds the
//! category order from `set(coco.getCatIds())`, and `refer.getImgIds` returns
//! `list(set(image_ids))`, which orders the RefCOCO records. A set's iteration order is its
//! hash-table slot order, which depends on the int hashes, the insertion order and the table
//! resizes. This module replays CPython's `set_add_entry` (linear probing over 9 slots, then
//! perturbed probing), its resize rule (`fill*5 >= mask*3` grows the table to the smallest
//! power of two above `used*4`) and the clean re-insertion, so the order comes out the same.

/// `LINEAR_PROBES` in CPython's `setobject.c`.
const LINEAR_PROBES: usize = 9;
/// `PERTURB_SHIFT` in CPython's `setobject.c`.
const PERTURB_SHIFT: u32 = 5;
/// `PySet_MINSIZE`.
const MIN_SIZE: usize = 8;
/// The modulus of CPython's numeric hash, `2**61 - 1`.
const HASH_MODULUS: u64 = (1 << 61) - 1;

/// `hash(v)` for a Python int that fits in `i64`.
pub fn python_int_hash(v: i64) -> i64 {
    let m = (v.unsigned_abs() % HASH_MODULUS) as i64;
    let h = if v < 0 { -m } else { m };
    if h == -1 {
        -2
    } else {
        h
    }
}

/// The elements of `set(keys)` in CPython's iteration order (`list(set(keys))`).
pub fn cpython_set_order(keys: &[i64]) -> Vec<i64> {
    let mut table: Vec<Option<(i64, i64)>> = vec![None; MIN_SIZE];
    let mut used = 0usize;
    for &key in keys {
        let hash = python_int_hash(key);
        let mask = table.len() - 1;
        match probe(&table, hash, Some(key)) {
            Probe::Present => continue,
            Probe::Empty(slot) => {
                table[slot] = Some((hash, key));
                used += 1;
            }
        }
        // No deletions happen, so `fill == used`.
        if used * 5 >= mask * 3 {
            let min_used = if used > 50_000 { used * 2 } else { used * 4 };
            let mut new_size = MIN_SIZE;
            while new_size <= min_used {
                new_size <<= 1;
            }
            let old = std::mem::replace(&mut table, vec![None; new_size]);
            for (hash, key) in old.into_iter().flatten() {
                match probe(&table, hash, None) {
                    Probe::Empty(slot) => table[slot] = Some((hash, key)),
                    Probe::Present => unreachable!("clean insert never compares keys"),
                }
            }
        }
    }
    table.into_iter().flatten().map(|(_, key)| key).collect()
}

enum Probe {
    Present,
    Empty(usize),
}

/// CPython's probe sequence; `key = None` is the clean insert of a resize (no comparisons).
fn probe(table: &[Option<(i64, i64)>], hash: i64, key: Option<i64>) -> Probe {
    let mask = table.len() - 1;
    let mut perturb = hash as u64;
    let mut i = (hash as u64 as usize) & mask;
    loop {
        let probes = if i + LINEAR_PROBES <= mask {
            LINEAR_PROBES
        } else {
            0
        };
        for (j, slot) in table.iter().enumerate().skip(i).take(probes + 1) {
            match *slot {
                None => return Probe::Empty(j),
                Some((h, k)) => {
                    if key.is_some_and(|key| h == hash && k == key) {
                        return Probe::Present;
                    }
                }
            }
        }
        perturb >>= PERTURB_SHIFT;
        i = (i
            .wrapping_mul(5)
            .wrapping_add(1)
            .wrapping_add(perturb as usize))
            & mask;
    }
}

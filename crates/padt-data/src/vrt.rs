//! Visual Reference Token ids (padt-reference.md §1.4).
//!
//! - `<|VRT_i|>` names merged patch `i` of one image, raster order over its merged grid
//!   (`t·gh·gw/4` patches for `image_grid_thw = [t, gh, gw]`).
//! - Local id = `V + i` (`V` = embedding rows). In a batch the prototypes of all images are
//!   concatenated, so sample `b`'s VRTs become global ids `V + offset_b + i` with
//!   `offset_b = Σ_{b' < b} Nm_{b'}` (PaDT's `assign_to_global_vrt_id`, one image per sample in
//!   sample order); [`VrtLayout::to_local`] is `assign_to_local_vrt_id`. Any id `>= V` is a VRT.

/// `<|VRT_i|>`.
pub fn vrt_token(i: u32) -> String {
    format!("<|VRT_{i}|>")
}

/// The patch index of a `<|VRT_i|>` string (exactly that form, decimal digits only).
pub fn parse_vrt_token(token: &str) -> Option<u32> {
    let digits = token.strip_prefix("<|VRT_")?.strip_suffix("|>")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The concatenated `<|VRT_p|>` strings of some patches (PaDT's `pid2vrt`).
pub fn vrt_string(patches: &[u32]) -> String {
    patches.iter().map(|&p| vrt_token(p)).collect()
}

/// Merged tokens (= VRTs) of an image with `image_grid_thw = [t, gh, gw]`:
/// `t·gh·gw / merge²`.
pub fn merged_tokens(grid_thw: [usize; 3], merge_size: usize) -> usize {
    grid_thw[0] * grid_thw[1] * grid_thw[2] / (merge_size * merge_size)
}

/// Where each sample's VRTs sit in the batch's prototype table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VrtLayout {
    /// `V`: the first VRT id.
    pub embed_size: u32,
    /// Merged tokens per image (sample order).
    pub counts: Vec<u32>,
    /// `offsets[b]` = merged tokens of the images before sample `b`.
    pub offsets: Vec<u32>,
}

impl VrtLayout {
    /// The layout of a batch of one-image samples with these grids.
    pub fn from_grids(embed_size: u32, grids: &[[usize; 3]], merge_size: usize) -> Self {
        let counts: Vec<u32> = grids
            .iter()
            .map(|&g| merged_tokens(g, merge_size) as u32)
            .collect();
        Self::from_counts(embed_size, counts)
    }

    /// The layout from merged-token counts per image.
    pub fn from_counts(embed_size: u32, counts: Vec<u32>) -> Self {
        let mut offsets = Vec::with_capacity(counts.len());
        let mut acc = 0u32;
        for &c in &counts {
            offsets.push(acc);
            acc += c;
        }
        VrtLayout {
            embed_size,
            counts,
            offsets,
        }
    }

    /// `ΣNm`, the prototype rows of the batch (logits are `V + ΣNm` wide).
    pub fn total(&self) -> u32 {
        self.counts.iter().sum()
    }

    /// Whether `id` is a VRT (local or global).
    pub fn is_vrt(&self, id: u32) -> bool {
        id >= self.embed_size
    }

    /// Local → global id for sample `b` (text ids pass through).
    pub fn to_global(&self, sample: usize, id: u32) -> u32 {
        if id >= self.embed_size {
            id + self.offsets[sample]
        } else {
            id
        }
    }

    /// Global → local id for sample `b` (text ids pass through).
    pub fn to_local(&self, sample: usize, id: u32) -> u32 {
        if id >= self.embed_size {
            id - self.offsets[sample]
        } else {
            id
        }
    }

    /// Global id of patch `p` of sample `b`.
    pub fn global_id(&self, sample: usize, patch: u32) -> u32 {
        self.embed_size + self.offsets[sample] + patch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vrt_strings_round_trip() {
        assert_eq!(vrt_token(12), "<|VRT_12|>");
        assert_eq!(parse_vrt_token("<|VRT_12|>"), Some(12));
        assert_eq!(parse_vrt_token("<|VRT_|>"), None);
        assert_eq!(parse_vrt_token("<|VRT_-1|>"), None);
        assert_eq!(parse_vrt_token("<|Obj_1|>"), None);
        assert_eq!(vrt_string(&[7, 0]), "<|VRT_7|><|VRT_0|>");
    }

    #[test]
    fn layout_offsets_and_ids() {
        // padt-tiny: grids [1,6,10] and [1,8,14] -> 15 and 28 merged tokens, offsets [0, 15].
        let l = VrtLayout::from_grids(1024, &[[1, 6, 10], [1, 8, 14]], 2);
        assert_eq!(l.counts, vec![15, 28]);
        assert_eq!(l.offsets, vec![0, 15]);
        assert_eq!(l.total(), 43);
        assert_eq!(l.to_global(1, 1024 + 11), 1024 + 26);
        assert_eq!(l.to_local(1, 1024 + 26), 1024 + 11);
        assert_eq!(l.to_global(1, 482), 482);
        assert_eq!(l.global_id(1, 3), 1042);
    }
}

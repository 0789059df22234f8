//! Connected-component labelling (8-connectivity) into buffers kept between layers.
//!
//! The same two-pass union-find labelling as `imageproc::region_labelling::connected_components`
//! with the same numbering (components numbered 1, 2, ... in raster order of their first pixel,
//! 0 for the background), so refinement and measurement give the same results as with imageproc;
//! but the label image and the union-find forest live in a [`Labeller`] that a layer reuses, so
//! labelling a layer allocates nothing once the buffers have the layer's size.

/// Buffers for labelling images of one size; they grow to a larger image and are then reused.
#[derive(Clone, Debug, Default)]
pub struct Labeller {
    /// Per pixel: the component's number (1-based, raster order of first pixel), 0 for background.
    pub labels: Vec<u32>,
    /// Union-find parent of each provisional label (index = provisional label).
    parent: Vec<u32>,
    /// Final number of each provisional label's root, 0 until it is met in the second pass.
    numbering: Vec<u32>,
}

impl Labeller {
    /// A labeller with buffers for `pixels` pixels already allocated.
    pub fn with_capacity(pixels: usize) -> Labeller {
        Labeller { labels: Vec::with_capacity(pixels), parent: Vec::with_capacity(pixels + 1), numbering: Vec::with_capacity(pixels + 1) }
    }

    /// Labels the `width` x `height` image whose pixel `i` (row-major) has the value `key(i)`:
    /// pixels with key 0 are background, 8-neighbours with the same non-zero key are one
    /// component. Returns the number of components; [`Labeller::labels`] holds the labels.
    pub fn label(&mut self, width: usize, height: usize, key: impl Fn(usize) -> u16) -> u32 {
        let pixels = width * height;
        assert!(pixels < u32::MAX as usize, "images of 2^32 or more pixels are not supported");
        self.labels.clear();
        self.labels.resize(pixels, 0);
        self.parent.clear();
        self.parent.push(0);
        if pixels == 0 {
            return 0;
        }

        // First pass: a provisional label per pixel, the smallest of its already-labelled
        // neighbours with the same key, those neighbours' labels joined.
        for y in 0..height {
            for x in 0..width {
                let index = y * width + x;
                let current = key(index);
                if current == 0 {
                    continue;
                }
                let mut neighbours = [0u32; 4];
                let mut count = 0;
                let mut consider = |neighbour: usize, labels: &[u32]| {
                    if key(neighbour) == current {
                        neighbours[count] = labels[neighbour];
                        count += 1;
                    }
                };
                // West, north, north-west, north-east: the order imageproc looks in.
                if x > 0 {
                    consider(index - 1, &self.labels);
                }
                if y > 0 {
                    consider(index - width, &self.labels);
                    if x > 0 {
                        consider(index - width - 1, &self.labels);
                    }
                    if x + 1 < width {
                        consider(index - width + 1, &self.labels);
                    }
                }
                if count == 0 {
                    let fresh = self.parent.len() as u32;
                    self.parent.push(fresh);
                    self.labels[index] = fresh;
                } else {
                    let smallest = *neighbours[..count].iter().min().expect("count > 0");
                    self.labels[index] = smallest;
                    for &other in &neighbours[..count] {
                        self.union(smallest, other);
                    }
                }
            }
        }

        // Second pass: number the roots in raster order of their first pixel.
        self.numbering.clear();
        self.numbering.resize(self.parent.len(), 0);
        let mut components = 0u32;
        for index in 0..pixels {
            let provisional = self.labels[index];
            if provisional == 0 {
                continue;
            }
            let root = self.root(provisional) as usize;
            if self.numbering[root] == 0 {
                components += 1;
                self.numbering[root] = components;
            }
            self.labels[index] = self.numbering[root];
        }
        components
    }

    /// The root of `label`'s set, halving the path on the way.
    fn root(&mut self, mut label: u32) -> u32 {
        while self.parent[label as usize] != label {
            let grandparent = self.parent[self.parent[label as usize] as usize];
            self.parent[label as usize] = grandparent;
            label = grandparent;
        }
        label
    }

    fn union(&mut self, a: u32, b: u32) {
        let (root_a, root_b) = (self.root(a), self.root(b));
        if root_a != root_b {
            // The smaller root stays the root; the numbering does not depend on which one.
            let (keep, join) = if root_a < root_b { (root_a, root_b) } else { (root_b, root_a) };
            self.parent[join as usize] = keep;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageBuffer, Luma};
    use imageproc::region_labelling::{connected_components, Connectivity};

    /// Same labels as imageproc on crafted images and on pseudo-random ones with several keys.
    #[test]
    fn labels_match_imageproc() {
        let mut labeller = Labeller::default();
        let mut seed = 0x2545_f491_u32;
        for (width, height, keys) in [(1usize, 1usize, 2u32), (7, 1, 3), (1, 9, 3), (13, 11, 2), (40, 30, 4), (64, 64, 6), (17, 33, 3)] {
            let values: Vec<u16> = (0..width * height)
                .map(|_| {
                    // xorshift32: deterministic noise with blobs of each key.
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    (seed % keys) as u16
                })
                .collect();
            let image = ImageBuffer::<Luma<u16>, Vec<u16>>::from_fn(width as u32, height as u32, |x, y| Luma([values[y as usize * width + x as usize]]));
            let expected = connected_components(&image, Connectivity::Eight, Luma([0u16]));
            let count = labeller.label(width, height, |i| values[i]);
            let expected_labels: Vec<u32> = expected.pixels().map(|p| p[0]).collect();
            assert_eq!(labeller.labels, expected_labels, "{width}x{height}, {keys} keys");
            assert_eq!(count, expected_labels.iter().copied().max().unwrap_or(0));
        }
    }

    #[test]
    fn diagonal_neighbours_join_and_different_keys_do_not() {
        // 1 . 2
        // . 1 2
        // 1 . .
        let values = [1u16, 0, 2, 0, 1, 2, 1, 0, 0];
        let mut labeller = Labeller::with_capacity(9);
        assert_eq!(labeller.label(3, 3, |i| values[i]), 2);
        assert_eq!(labeller.labels, vec![1, 0, 2, 0, 1, 2, 1, 0, 0]);
    }
}

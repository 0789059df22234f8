//! Connected-component labelling (8-connectivity) into buffers kept between layers.
//!
//! Two-pass union-find labelling like `imageproc::region_labelling::connected_components`, with
//! the same numbering (components numbered 1, 2, ... in raster order of their first pixel,
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
        Labeller {
            labels: Vec::with_capacity(pixels),
            parent: Vec::with_capacity(pixels + 1),
            numbering: Vec::with_capacity(pixels + 1),
        }
    }

    /// Labels the `width` x `height` image whose pixel `i` (row-major) has the value `key(i)`:
    /// pixels with key 0 are background, 8-neighbours with the same non-zero key are one
    /// component. Returns the number of components; [`Labeller::labels`] holds the labels.
    pub fn label(&mut self, width: usize, height: usize, key: impl Fn(usize) -> u16) -> u32 {
        let pixels = width * height;
        assert!(
            pixels < u32::MAX as usize,
            "images of 2^32 or more pixels are not supported"
        );
        self.labels.clear();
        self.labels.resize(pixels, 0);
        self.parent.clear();
        self.parent.push(0);
        if pixels == 0 {
            return 0;
        }

        // First pass: a provisional label per pixel, joined with its already-labelled 8-neighbours
        // of the same key. The neighbours looked at are north, north-east, north-west and west, in
        // the decision tree of Wu, Otoo and Suzuki (2005): north is an 8-neighbour of the other
        // three, so when it matches they are joined to it already and nothing needs joining; of
        // the rest, only north-east and one of west / north-west (neighbours of each other) can
        // belong to different sets. Which provisional label a component gets does not matter: the
        // second pass numbers components by their first pixel, as imageproc does.
        for y in 0..height {
            for x in 0..width {
                let index = y * width + x;
                let current = key(index);
                if current == 0 {
                    continue;
                }
                let matches = |neighbour: usize| key(neighbour) == current;
                let west = (x > 0 && matches(index - 1)).then(|| index - 1);
                let north = y > 0 && matches(index - width);
                let label = if north {
                    self.labels[index - width]
                } else {
                    let north_west = (y > 0 && x > 0 && matches(index - width - 1)).then(|| index - width - 1);
                    let north_east = y > 0 && x + 1 < width && matches(index - width + 1);
                    let west_side = north_west.or(west).map(|neighbour| self.labels[neighbour]);
                    match (north_east, west_side) {
                        (true, Some(west_label)) => {
                            let north_east_label = self.labels[index - width + 1];
                            self.union(north_east_label, west_label);
                            north_east_label
                        }
                        (true, None) => self.labels[index - width + 1],
                        (false, Some(west_label)) => west_label,
                        (false, None) => {
                            let fresh = self.parent.len() as u32;
                            self.parent.push(fresh);
                            fresh
                        }
                    }
                };
                self.labels[index] = label;
            }
        }

        // Second pass: number the roots in raster order of their first pixel.
        self.numbering.clear();
        self.numbering.resize(self.parent.len(), 0);
        let mut components = 0u32;
        // Neighbouring pixels mostly share a provisional label: look its number up once per run.
        let (mut run_label, mut run_number) = (0u32, 0u32);
        for index in 0..pixels {
            let provisional = self.labels[index];
            if provisional == 0 {
                continue;
            }
            if provisional != run_label {
                let root = self.root(provisional) as usize;
                if self.numbering[root] == 0 {
                    components += 1;
                    self.numbering[root] = components;
                }
                (run_label, run_number) = (provisional, self.numbering[root]);
            }
            self.labels[index] = run_number;
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
            let (keep, join) = if root_a < root_b {
                (root_a, root_b)
            } else {
                (root_b, root_a)
            };
            self.parent[join as usize] = keep;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageBuffer, Luma};
    use imageproc::region_labelling::{connected_components, Connectivity};

    /// Same labels as imageproc on pseudo-random images of many sizes with several keys.
    #[test]
    fn labels_match_imageproc() {
        let mut labeller = Labeller::default();
        let mut seed = 0x2545_f491_u32;
        let hand_picked = [
            (1usize, 1usize, 2u32),
            (7, 1, 3),
            (1, 9, 3),
            (13, 11, 2),
            (40, 30, 4),
            (64, 64, 6),
            (17, 33, 3),
            (200, 150, 2),
            (121, 97, 3),
        ];
        // And 500 more sizes and key counts, spread by two primes, for the decision tree's edges
        // (from 2 pixels up: imageproc 0.27 panics on a single foreground pixel, see below).
        let spread = (0..500usize).map(|i| (2 + (i * 7919) % 96, 1 + (i * 104_729) % 83, 2 + (i % 5) as u32));
        for (width, height, keys) in hand_picked.into_iter().chain(spread) {
            let values: Vec<u16> = (0..width * height)
                .map(|_| {
                    // xorshift32: deterministic noise with blobs of each key.
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    (seed % keys) as u16
                })
                .collect();
            let image = ImageBuffer::<Luma<u16>, Vec<u16>>::from_fn(width as u32, height as u32, |x, y| {
                Luma([values[y as usize * width + x as usize]])
            });
            let expected = connected_components(&image, Connectivity::Eight, Luma([0u16]));
            let count = labeller.label(width, height, |i| values[i]);
            let expected_labels: Vec<u32> = expected.pixels().map(|p| p[0]).collect();
            assert_eq!(labeller.labels, expected_labels, "{width}x{height}, {keys} keys");
            assert_eq!(count, expected_labels.iter().copied().max().unwrap_or(0));
        }
    }

    /// A one-pixel image whose pixel is foreground is one component (imageproc 0.27's own
    /// labelling panics on it).
    #[test]
    fn a_single_foreground_pixel_is_one_component() {
        let mut labeller = Labeller::default();
        assert_eq!(labeller.label(1, 1, |_| 3), 1);
        assert_eq!(labeller.labels, vec![1]);
        assert_eq!(labeller.label(1, 1, |_| 0), 0);
        assert_eq!(labeller.labels, vec![0]);
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

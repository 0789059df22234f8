//! The build-long defect map in bed coordinates: every defect of every layer stacked onto a
//! coarse grid (seed 001 stacks 2D layer results into 3D), bounded in memory whatever the build's
//! length: per class and cell, how many inspections saw a defect there and the last layer that
//! did. The defects themselves stay in the journal, which restores the map on restart.

use serde::Serialize;

/// The most cells per class: a 250 x 250 mm bed at 0.5 mm cells. With 4 bytes of count and 4 of
/// layer per cell, five defect classes stay under 10 MiB.
pub const MAX_CELLS: usize = 250_000;

/// An axis-aligned box on the bed in millimetres, from the bed's top-left corner (x along the
/// recoater's travel, y along the blade). `x0 <= x1`, `y0 <= y1`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Footprint {
    pub x0: f64,
    pub y0: f64,
    pub x1: f64,
    pub y1: f64,
}

impl Footprint {
    /// The footprint of a pixel bounding box `[x, y, width, height]` of the rectified bed, at
    /// `mm_per_px` = [along x, along y].
    pub fn from_bbox_px(bbox: [u32; 4], mm_per_px: [f64; 2]) -> Footprint {
        let [x, y, w, h] = bbox.map(f64::from);
        Footprint {
            x0: x * mm_per_px[0],
            y0: y * mm_per_px[1],
            x1: (x + w) * mm_per_px[0],
            y1: (y + h) * mm_per_px[1],
        }
    }

    /// `[x, y, width, height]` in millimetres, as the journal keeps it.
    pub fn to_xywh(self) -> [f64; 4] {
        [self.x0, self.y0, self.x1 - self.x0, self.y1 - self.y0]
    }

    pub fn from_xywh([x, y, w, h]: [f64; 4]) -> Footprint {
        Footprint {
            x0: x,
            y0: y,
            x1: x + w,
            y1: y + h,
        }
    }

    pub fn area(self) -> f64 {
        (self.x1 - self.x0).max(0.0) * (self.y1 - self.y0).max(0.0)
    }

    /// Intersection over union of the two spans along y (the blade), whatever their x.
    pub fn iou_along_y(self, other: Footprint) -> f64 {
        let intersection = (self.y1.min(other.y1) - self.y0.max(other.y0)).max(0.0);
        let union = (self.y1 - self.y0) + (other.y1 - other.y0) - intersection;
        if union <= 0.0 {
            0.0
        } else {
            intersection / union
        }
    }

    /// Intersection over union of two boxes (0 when they do not overlap or both are empty).
    pub fn iou(self, other: Footprint) -> f64 {
        let intersection = self.intersection_area(other);
        let union = self.area() + other.area() - intersection;
        if union <= 0.0 {
            0.0
        } else {
            intersection / union
        }
    }

    /// The share of the smaller box that lies inside the other (0 when either is empty): 1 for
    /// a box inside the other, whatever their sizes.
    pub fn cover(self, other: Footprint) -> f64 {
        let smaller = self.area().min(other.area());
        if smaller <= 0.0 {
            0.0
        } else {
            self.intersection_area(other) / smaller
        }
    }

    /// The smallest box holding both.
    pub fn union(self, other: Footprint) -> Footprint {
        Footprint {
            x0: self.x0.min(other.x0),
            y0: self.y0.min(other.y0),
            x1: self.x1.max(other.x1),
            y1: self.y1.max(other.y1),
        }
    }

    fn intersection_area(self, other: Footprint) -> f64 {
        Footprint {
            x0: self.x0.max(other.x0),
            y0: self.y0.max(other.y0),
            x1: self.x1.min(other.x1),
            y1: self.y1.min(other.y1),
        }
        .area()
    }
}

/// One class's grid.
#[derive(Debug, Clone)]
struct ClassGrid {
    class: String,
    /// Inspections that saw a defect of the class in the cell, row-major.
    counts: Vec<u32>,
    /// The last layer that did (meaningful where the count is > 0).
    last_layer: Vec<u32>,
}

/// The stacked map: a grid of `cell_mm` cells over the bed, one layer of counts per class.
#[derive(Debug, Clone)]
pub struct DefectMap {
    pub cell_mm: f64,
    pub columns: usize,
    pub rows: usize,
    grids: Vec<ClassGrid>,
}

impl DefectMap {
    /// An empty map of a `width_mm` x `height_mm` bed (the configuration checks the cell count
    /// against MAX_CELLS).
    pub fn new(width_mm: f64, height_mm: f64, cell_mm: f64) -> DefectMap {
        let columns = ((width_mm / cell_mm).ceil() as usize).clamp(1, MAX_CELLS);
        let rows = ((height_mm / cell_mm).ceil() as usize).clamp(1, MAX_CELLS / columns);
        DefectMap {
            cell_mm,
            columns,
            rows,
            grids: Vec::new(),
        }
    }

    /// Counts one defect of `class` seen on `layer` in every cell its footprint touches (a
    /// footprint past the bed's edge is clipped to it).
    pub fn add(&mut self, layer: u32, class: &str, footprint: Footprint) {
        let cells = self.columns * self.rows;
        let index = match self.grids.iter().position(|g| g.class == class) {
            Some(index) => index,
            None => {
                self.grids.push(ClassGrid {
                    class: class.to_string(),
                    counts: vec![0; cells],
                    last_layer: vec![0; cells],
                });
                self.grids.len() - 1
            }
        };
        let (c0, c1) = self.span(footprint.x0, footprint.x1, self.columns);
        let (r0, r1) = self.span(footprint.y0, footprint.y1, self.rows);
        let grid = &mut self.grids[index];
        for row in r0..=r1 {
            for column in c0..=c1 {
                let cell = row * self.columns + column;
                grid.counts[cell] = grid.counts[cell].saturating_add(1);
                grid.last_layer[cell] = grid.last_layer[cell].max(layer);
            }
        }
    }

    /// The first and last cell index an interval [from, to] mm touches along one axis.
    fn span(&self, from: f64, to: f64, cells: usize) -> (usize, usize) {
        let index = |mm: f64| ((mm / self.cell_mm).floor().max(0.0) as usize).min(cells - 1);
        // A box that ends exactly on a cell edge does not touch the next cell.
        let last = if to > from { index(to - 1e-9) } else { index(to) };
        (index(from), last.max(index(from)))
    }

    /// Count and last layer of one class's cell; `None` when the class was never seen.
    #[cfg(test)]
    pub fn cell(&self, class: &str, column: usize, row: usize) -> Option<(u32, u32)> {
        let grid = self.grids.iter().find(|g| g.class == class)?;
        let cell = row.checked_mul(self.columns)? + column;
        Some((*grid.counts.get(cell)?, grid.last_layer[cell]))
    }

    /// Cells with a count, per class name.
    pub fn occupied_cells(&self) -> Vec<(String, usize)> {
        self.grids
            .iter()
            .map(|g| (g.class.clone(), g.counts.iter().filter(|&&c| c > 0).count()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn footprint_from_pixels_and_iou_by_hand() {
        // 10 x 10 px at 0.5 mm (x) and 0.25 mm (y) from pixel (4, 8): 2..7 mm by 2..4.5 mm.
        let a = Footprint::from_bbox_px([4, 8, 10, 10], [0.5, 0.25]);
        assert_eq!(
            a,
            Footprint {
                x0: 2.0,
                y0: 2.0,
                x1: 7.0,
                y1: 4.5
            }
        );
        assert_eq!(a.to_xywh(), [2.0, 2.0, 5.0, 2.5]);
        // Two 4 x 4 mm squares offset by 2 mm along x: intersection 2 x 4 = 8, union 16 + 16 - 8 = 24.
        let p = Footprint {
            x0: 0.0,
            y0: 0.0,
            x1: 4.0,
            y1: 4.0,
        };
        let q = Footprint {
            x0: 2.0,
            y0: 0.0,
            x1: 6.0,
            y1: 4.0,
        };
        assert!((p.iou(q) - 8.0 / 24.0).abs() < 1e-12);
        assert_eq!(p.iou(p), 1.0);
        assert_eq!(
            p.iou(Footprint {
                x0: 4.0,
                y0: 0.0,
                x1: 8.0,
                y1: 4.0
            }),
            0.0,
            "touching edges share no area"
        );
    }

    #[test]
    fn defects_count_in_every_cell_they_touch_with_the_last_layer() {
        let mut map = DefectMap::new(250.0, 250.0, 5.0);
        assert_eq!((map.columns, map.rows), (50, 50));
        // 7..13 mm x 0..5 mm: columns 1 and 2 (5..10, 10..15), row 0 only (ends on the edge).
        map.add(
            3,
            "streaking",
            Footprint {
                x0: 7.0,
                y0: 0.0,
                x1: 13.0,
                y1: 5.0,
            },
        );
        map.add(
            9,
            "streaking",
            Footprint {
                x0: 11.0,
                y0: 1.0,
                x1: 12.0,
                y1: 2.0,
            },
        );
        assert_eq!(map.cell("streaking", 1, 0), Some((1, 3)));
        assert_eq!(map.cell("streaking", 2, 0), Some((2, 9)));
        assert_eq!(map.cell("streaking", 3, 0), Some((0, 0)));
        assert_eq!(map.cell("streaking", 1, 1), Some((0, 0)));
        assert_eq!(map.cell("hopping", 1, 0), None);
        assert_eq!(map.occupied_cells(), vec![("streaking".to_string(), 2)]);
        // Past the edge: clipped to the last cell.
        map.add(
            10,
            "hopping",
            Footprint {
                x0: 248.0,
                y0: 248.0,
                x1: 260.0,
                y1: 260.0,
            },
        );
        assert_eq!(map.cell("hopping", 49, 49), Some((1, 10)));
        assert_eq!(
            map.occupied_cells(),
            vec![("streaking".to_string(), 2), ("hopping".to_string(), 1)]
        );
    }
}

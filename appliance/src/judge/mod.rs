//! Judging: one layer from frame to verdict (`frame_check`: the frames the model must not judge;
//! `pipeline`: check, rectify, infer, fuse, refine, measure; `domain`: whether the layer is like
//! the model's training layers; `decide`: the rules and the recoat budget; `layer_class`: the layer-level head's
//! call; `reason`: which rule decided and its PLC reason code), and the build across layers
//! (`defect_map`: the build-long grid in bed millimetres; `tracks`: defects followed across
//! layers and the rules on them; `history`: what the loop remembers, restored from the journal).
//!
//! Owns every verdict. Must not touch devices, threads, files or the network: it is handed a
//! frame and the journal's records and returns decisions; `record` and `service` keep and send
//! them. Its only reads from outside are at start-up (`Pipeline::load`).

pub mod decide;
pub mod defect_map;
pub mod domain;
pub mod frame_check;
pub mod history;
pub mod layer_class;
pub mod pipeline;
pub mod reason;
pub mod tracks;

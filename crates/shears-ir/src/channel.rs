//! Parameter-free ops that pick channels ([`Op::Channel`](crate::Op::Channel)): ShuffleNet's
//! channel shuffle and a channel range (one output of a channel `Split`, or a channel `Slice`).
//!
//! Both are *channel gathers*: output channel `o` is input channel `sources(c_in)[o]`, the
//! spatial axes unchanged. Pruning follows the gather ([`ChannelMap::Select`]); a shuffle also
//! ties the channels that must go together for it to stay a shuffle.

use serde::{Deserialize, Serialize};

use crate::ChannelMap;

/// A channel gather of a `[C, H, W]` feature map.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ChannelOp {
    /// ShuffleNet's channel shuffle: `[C, H, W]` viewed as `[groups, C / groups, H, W]`, the
    /// first two axes swapped, viewed back as `[C, H, W]`. Output channel `j * groups + i` is
    /// input channel `i * (C / groups) + j`.
    Shuffle {
        /// Number of groups; must divide the channel count.
        groups: usize,
    },
    /// Input channels `start..end`.
    Slice {
        /// First channel kept.
        start: usize,
        /// One past the last channel kept (`start < end <= C`).
        end: usize,
    },
}

impl ChannelOp {
    /// `channel_shuffle` or `channel_slice`.
    pub fn name(&self) -> &'static str {
        match self {
            ChannelOp::Shuffle { .. } => "channel_shuffle",
            ChannelOp::Slice { .. } => "channel_slice",
        }
    }

    /// Checks the configuration alone: a positive group count, a non-empty range.
    pub fn check(&self) -> Result<(), String> {
        match *self {
            ChannelOp::Shuffle { groups: 0 } => {
                Err("channel_shuffle groups must be positive".into())
            }
            ChannelOp::Slice { start, end } if start >= end => Err(format!(
                "channel_slice range {start}..{end} must be non-empty"
            )),
            _ => Ok(()),
        }
    }

    /// The output shape for a `[C, H, W]` input, or what is wrong.
    pub fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, String> {
        let [c, h, w] = *input else {
            return Err(format!(
                "{} expects a [C, H, W] input, got {input:?}",
                self.name()
            ));
        };
        match *self {
            ChannelOp::Shuffle { groups } => {
                if !c.is_multiple_of(groups) {
                    return Err(format!(
                        "channel_shuffle groups {groups} must divide the {c} channels"
                    ));
                }
                Ok(vec![c, h, w])
            }
            ChannelOp::Slice { start, end } => {
                if end > c {
                    return Err(format!(
                        "channel_slice range {start}..{end} exceeds the {c} channels"
                    ));
                }
                Ok(vec![end - start, h, w])
            }
        }
    }

    /// For each output channel, the input channel it copies, given `c_in` input channels
    /// (valid for shapes [`ChannelOp::output_shape`] accepts).
    ///
    /// ```
    /// use shears_ir::ChannelOp;
    /// assert_eq!(ChannelOp::Shuffle { groups: 2 }.sources(6), [0, 3, 1, 4, 2, 5]);
    /// assert_eq!(ChannelOp::Slice { start: 2, end: 5 }.sources(6), [2, 3, 4]);
    /// ```
    pub fn sources(&self, c_in: usize) -> Vec<usize> {
        match *self {
            ChannelOp::Shuffle { groups } => {
                let per = c_in / groups;
                (0..c_in).map(|o| (o % groups) * per + o / groups).collect()
            }
            ChannelOp::Slice { start, end } => (start..end).collect(),
        }
    }

    /// The channel map: the gather, and for a shuffle the input channels tied together
    /// (position `j` of every group), since a shuffle over the kept channels is only a
    /// `groups`-group shuffle when every group keeps the same positions.
    pub fn channel_map(&self, c_in: usize) -> ChannelMap {
        let tied = match *self {
            ChannelOp::Shuffle { groups } if groups > 1 => {
                let per = c_in / groups;
                (0..per)
                    .map(|j| (0..groups).map(|i| i * per + j).collect())
                    .collect()
            }
            _ => Vec::new(),
        };
        ChannelMap::Select {
            sources: self.sources(c_in),
            tied,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffle_is_the_reshape_transpose_reshape_permutation() {
        // [g, C/g] -> [C/g, g]: out[j * g + i] = in[i * C/g + j].
        let (g, c) = (3, 12);
        let src = ChannelOp::Shuffle { groups: g }.sources(c);
        let per = c / g;
        for i in 0..g {
            for j in 0..per {
                assert_eq!(src[j * g + i], i * per + j);
            }
        }
        let mut sorted = src.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..c).collect::<Vec<_>>(), "a permutation");
    }

    #[test]
    fn shapes_and_checks() {
        let s = ChannelOp::Shuffle { groups: 2 };
        assert_eq!(s.output_shape(&[6, 4, 4]).unwrap(), [6, 4, 4]);
        assert!(s.output_shape(&[5, 4, 4]).unwrap_err().contains("divide"));
        assert!(s.output_shape(&[6]).unwrap_err().contains("[C, H, W]"));
        let r = ChannelOp::Slice { start: 2, end: 5 };
        assert_eq!(r.output_shape(&[6, 1, 1]).unwrap(), [3, 1, 1]);
        assert!(r.output_shape(&[4, 1, 1]).unwrap_err().contains("exceeds"));
        assert!(ChannelOp::Slice { start: 3, end: 3 }.check().is_err());
        assert!(ChannelOp::Shuffle { groups: 0 }.check().is_err());
    }

    #[test]
    fn shuffle_ties_each_position_across_groups() {
        let ChannelMap::Select { tied, .. } = ChannelOp::Shuffle { groups: 2 }.channel_map(6)
        else {
            panic!("a select map")
        };
        assert_eq!(tied, [vec![0, 3], vec![1, 4], vec![2, 5]]);
    }
}

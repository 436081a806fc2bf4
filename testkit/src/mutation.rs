//! Mutations of valid inputs for the hostile-input tests: a proptest
//! strategy that damages bytes the way fuzzers and broken peers do (bit
//! flips, truncations, splices, cuts, overwritten lengths and numbers,
//! hostile values), and the function that applies them.
//!
//! Each test names the damage its format is sensitive to with
//! [`Mutations`]: the bytes a splice favours (`{`, `"` for JSON; `=`,
//! newline for TOML), how long splices and cuts are, which numbers
//! overwrite a binary length field, which hostile values replace a
//! decimal or a `key = value`. Positions are any `usize`, taken modulo the
//! length when applied, so a mutation always lands inside the input.
//!
//! # Algorithm
//! Every kind a test asks for is one arm of a uniform union (as one
//! `prop_oneof!` of those arms would be); a favoured-byte choice is a
//! weighted union of the favourites, each as likely as "any byte".

use proptest::prelude::*;
use proptest::strategy::{BoxedStrategy, Union};
use std::ops::Range;

/// One way of damaging an input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mutation {
    /// Flip one bit of the byte at a position.
    Flip(usize, u8),
    /// Keep only a prefix.
    Truncate(usize),
    /// Insert bytes at a position.
    Splice(usize, Vec<u8>),
    /// Remove up to `n` bytes from a position.
    Cut(usize, usize),
    /// Overwrite the bytes at a position with these (a little-endian
    /// number: a length, a count), clipped at the end of the input.
    Overwrite(usize, Vec<u8>),
    /// Replace the run of digits at or after a position with a decimal.
    Number(usize, &'static str),
    /// Replace the value after the `=` at or after a position (up to the
    /// end of its line) with a value, bare or quoted (`true`).
    Value(usize, &'static str, bool),
    /// Append a copy of the input to itself.
    Double,
}

impl Mutation {
    /// Applies this mutation to `bytes` (an empty input stays empty).
    pub fn apply(&self, bytes: &mut Vec<u8>) {
        let len = bytes.len();
        if len == 0 {
            return;
        }
        match self {
            Self::Flip(p, b) => bytes[p % len] ^= 1 << (b % 8),
            Self::Truncate(p) => bytes.truncate(p % len),
            Self::Splice(p, b) => {
                let at = p % (len + 1);
                bytes.splice(at..at, b.iter().copied());
            }
            Self::Cut(p, n) => {
                let at = p % len;
                bytes.drain(at..at.saturating_add(*n).min(len));
            }
            Self::Overwrite(p, v) => {
                let at = p % len;
                let end = at.saturating_add(v.len()).min(len);
                bytes[at..end].copy_from_slice(&v[..end - at]);
            }
            Self::Number(p, v) => {
                let from = p % len;
                let Some(start) = bytes[from..].iter().position(u8::is_ascii_digit) else {
                    return;
                };
                let start = from + start;
                let end = bytes[start..]
                    .iter()
                    .position(|b| !b.is_ascii_digit())
                    .map_or(len, |n| start + n);
                bytes.splice(start..end, v.bytes());
            }
            Self::Value(p, v, quoted) => {
                let from = p % len;
                let Some(eq) = bytes[from..].iter().position(|&b| b == b'=') else {
                    return;
                };
                let start = from + eq + 1;
                let end = bytes[start..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(len, |n| start + n);
                let value = if *quoted {
                    format!(" {v:?}")
                } else {
                    format!(" {v}")
                };
                bytes.splice(start..end, value.into_bytes());
            }
            Self::Double => {
                let copy = bytes.clone();
                bytes.extend_from_slice(&copy);
            }
        }
    }
}

/// `bytes` with every mutation applied, in order.
pub fn mutated(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        m.apply(&mut bytes);
    }
    bytes
}

/// Integers whose little-endian bytes overwrite a field.
pub trait LittleEndian: Arbitrary + Copy + std::fmt::Debug + 'static {
    /// `to_le_bytes`, as a vector.
    fn le_bytes(self) -> Vec<u8>;
}

impl LittleEndian for u16 {
    fn le_bytes(self) -> Vec<u8> {
        self.to_le_bytes().to_vec()
    }
}

impl LittleEndian for u32 {
    fn le_bytes(self) -> Vec<u8> {
        self.to_le_bytes().to_vec()
    }
}

impl LittleEndian for u64 {
    fn le_bytes(self) -> Vec<u8> {
        self.to_le_bytes().to_vec()
    }
}

/// The kinds of [`Mutation`] one test draws from, built up kind by kind;
/// [`Mutations::strategy`] draws each kind equally often.
#[derive(Debug, Clone)]
pub struct Mutations {
    arms: Vec<BoxedStrategy<Mutation>>,
}

impl Mutations {
    /// Flips, truncations, splices of `splice_len` bytes (each of
    /// `favoured` as likely as any other byte) and cuts of `cut_len`
    /// bytes: what every input takes.
    pub fn bytes(favoured: &'static [u8], splice_len: Range<usize>, cut_len: Range<usize>) -> Self {
        let byte = with_favourites(favoured, any::<u8>());
        let arms = vec![
            (any::<usize>(), 0u8..8)
                .prop_map(|(p, b)| Mutation::Flip(p, b))
                .boxed(),
            any::<usize>().prop_map(Mutation::Truncate).boxed(),
            (any::<usize>(), prop::collection::vec(byte, splice_len))
                .prop_map(|(p, b)| Mutation::Splice(p, b))
                .boxed(),
            (any::<usize>(), cut_len)
                .prop_map(|(p, n)| Mutation::Cut(p, n))
                .boxed(),
        ];
        Self { arms }
    }

    /// Adds overwrites with an integer `T` (each of `favoured` as likely as
    /// any other value).
    pub fn overwrite<T: LittleEndian>(mut self, favoured: &'static [T]) -> Self {
        let value = with_favourites(favoured, any::<T>());
        self.arms.push(
            (any::<usize>(), value)
                .prop_map(|(p, v)| Mutation::Overwrite(p, v.le_bytes()))
                .boxed(),
        );
        self
    }

    /// Adds replacements of a decimal by one of `decimals`.
    pub fn numbers(mut self, decimals: &'static [&'static str]) -> Self {
        self.arms.push(
            (any::<usize>(), prop::sample::select(decimals))
                .prop_map(|(p, v)| Mutation::Number(p, v))
                .boxed(),
        );
        self
    }

    /// Adds replacements of a `key = value`'s value by one of `values`,
    /// bare or quoted.
    pub fn values(mut self, values: &'static [&'static str]) -> Self {
        self.arms.push(
            (any::<usize>(), prop::sample::select(values), any::<bool>())
                .prop_map(|(p, v, q)| Mutation::Value(p, v, q))
                .boxed(),
        );
        self
    }

    /// Adds doubling the input.
    pub fn double(mut self) -> Self {
        self.arms.push(Just(Mutation::Double).boxed());
        self
    }

    /// One mutation, each kind added equally likely.
    pub fn strategy(self) -> impl Strategy<Value = Mutation> {
        Union::new(self.arms)
    }
}

/// `any`, or one of `favoured`, each as likely as `any`.
fn with_favourites<T: Clone + std::fmt::Debug + 'static>(
    favoured: &'static [T],
    any: impl Strategy<Value = T> + 'static,
) -> BoxedStrategy<T> {
    if favoured.is_empty() {
        return any.boxed();
    }
    let weight = u32::try_from(favoured.len()).unwrap_or(u32::MAX);
    Union::new_weighted(vec![
        (weight, prop::sample::select(favoured).boxed()),
        (1, any.boxed()),
    ])
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(input: &str, m: Mutation) -> String {
        String::from_utf8_lossy(&mutated(input.as_bytes().to_vec(), &[m])).into_owned()
    }

    #[test]
    fn each_kind_lands_inside_the_input() {
        assert_eq!(apply("ab", Mutation::Flip(2, 0)), "`b");
        assert_eq!(apply("abc", Mutation::Truncate(5)), "ab");
        assert_eq!(apply("ab", Mutation::Splice(3, b"x".to_vec())), "xab");
        assert_eq!(apply("abcd", Mutation::Cut(1, 99)), "a");
        assert_eq!(
            apply("abcd", Mutation::Overwrite(3, b"xy".to_vec())),
            "abcx"
        );
        assert_eq!(apply("{\"a\":12}", Mutation::Number(0, "-1")), "{\"a\":-1}");
        assert_eq!(
            apply("a = 1\nb = 2", Mutation::Value(0, "x", true)),
            "a = \"x\"\nb = 2"
        );
        assert_eq!(apply("a=1", Mutation::Value(0, "x", false)), "a= x");
        assert_eq!(apply("ab", Mutation::Double), "abab");
        assert_eq!(apply("", Mutation::Double), "");
    }

    proptest! {
        #[test]
        fn every_kind_is_drawn(ms in prop::collection::vec(
            Mutations::bytes(b"{", 1..4, 1..4)
                .overwrite::<u32>(&[u32::MAX])
                .numbers(&["1e400"])
                .values(&["nan"])
                .double()
                .strategy(),
            64..65,
        )) {
            let kinds: std::collections::BTreeSet<_> =
                ms.iter().map(std::mem::discriminant).map(|d| format!("{d:?}")).collect();
            // 8 kinds in 64 draws: all but a vanishing few runs see 6 or more.
            prop_assert!(kinds.len() >= 5, "{kinds:?}");
        }
    }
}

//! Seeded names and text: display names, channel names and message
//! sentences from small fixed word lists, so every run with one seed reads
//! the same and every string is plain ASCII.

use rand::Rng;
use rand::rngs::StdRng;

const ADJECTIVES: &[&str] = &[
    "quiet", "rapid", "amber", "lucky", "brave", "cosmic", "dusty", "frozen", "golden", "hidden",
    "ivory", "jolly", "mellow", "neon", "odd", "pixel", "rusty", "silver", "tidy", "wild",
];
const NOUNS: &[&str] = &[
    "otter", "forge", "harbor", "lantern", "meadow", "nebula", "orchard", "parrot", "quarry",
    "river", "summit", "tundra", "valley", "walrus", "yard", "zephyr", "falcon", "garden",
    "island", "comet",
];
const TOPICS: &[&str] = &[
    "general",
    "memes",
    "help",
    "announcements",
    "off-topic",
    "music",
    "gaming",
    "art",
    "dev",
    "support",
];
const WORDS: &[&str] = &[
    "hello", "anyone", "around", "tonight", "the", "build", "is", "green", "again", "what", "did",
    "you", "think", "of", "patch", "notes", "lol", "nice", "shard", "ping",
];

/// A display name such as `lucky-otter`.
pub(crate) fn name(rng: &mut StdRng) -> String {
    let mut s = String::with_capacity(16);
    push_name(&mut s, rng, '-');
    s
}

/// Appends a name like [`name`]'s, with `sep` between its two words.
pub(crate) fn push_name(out: &mut String, rng: &mut StdRng, sep: char) {
    let a = ADJECTIVES[rng.random_range(0..ADJECTIVES.len())];
    let n = NOUNS[rng.random_range(0..NOUNS.len())];
    out.push_str(a);
    out.push(sep);
    out.push_str(n);
}

/// An emoji name such as `lucky_otter` (emoji names allow no `-`).
pub(crate) fn emoji_name(rng: &mut StdRng) -> String {
    let mut s = String::with_capacity(16);
    push_name(&mut s, rng, '_');
    s
}

/// A text channel name such as `help-3`.
pub(crate) fn channel_name(rng: &mut StdRng) -> String {
    let topic = TOPICS[rng.random_range(0..TOPICS.len())];
    let mut s = String::with_capacity(topic.len() + 3);
    s.push_str(topic);
    s.push('-');
    super::json_text::push_u64(&mut s, u64::from(rng.random_range(0..100u32)));
    s
}

/// Appends message text of 3 to 12 words to `out`.
pub(crate) fn push_sentence(out: &mut String, rng: &mut StdRng) {
    let n = rng.random_range(3..=12);
    for i in 0..n {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(WORDS[rng.random_range(0..WORDS.len())]);
    }
}

/// Message text of 3 to 12 words.
pub(crate) fn sentence(rng: &mut StdRng) -> String {
    let mut s = String::with_capacity(64);
    push_sentence(&mut s, rng);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Message content is written without escaping (see `messages`), which
    /// is only right while no word needs any.
    #[test]
    fn words_need_no_json_escaping() {
        for w in ADJECTIVES.iter().chain(NOUNS).chain(TOPICS).chain(WORDS) {
            let mut out = String::new();
            crate::world::json_text::push_str(&mut out, w);
            assert_eq!(out, format!("\"{w}\""));
        }
    }
}

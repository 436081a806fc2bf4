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
    let a = ADJECTIVES[rng.random_range(0..ADJECTIVES.len())];
    let n = NOUNS[rng.random_range(0..NOUNS.len())];
    let mut s = String::with_capacity(a.len() + n.len() + 1);
    s.push_str(a);
    s.push('-');
    s.push_str(n);
    s
}

/// An emoji name such as `lucky_otter` (emoji names allow no `-`).
pub(crate) fn emoji_name(rng: &mut StdRng) -> String {
    name(rng).replace('-', "_")
}

/// A text channel name such as `help-3`.
pub(crate) fn channel_name(rng: &mut StdRng) -> String {
    format!(
        "{}-{}",
        TOPICS[rng.random_range(0..TOPICS.len())],
        rng.random_range(0..100u32)
    )
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

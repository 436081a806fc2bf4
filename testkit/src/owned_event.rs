//! An envelope event that owns its bytes: what property tests generate and
//! event logs keep, lent out as the borrowed [`Event`] the encoder and the
//! worker take.

use envelope::{Event, GuildCreateKind};

/// [`Event`] with owned fields; `D` holds the payload (`Vec<u8>`, or a
/// `String` for a log that searches its JSON).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedEvent<D = Vec<u8>> {
    pub epoch: u64,
    pub seq: u64,
    pub received_at: u64,
    pub t: String,
    pub guild_id: Option<u64>,
    pub marker: Option<GuildCreateKind>,
    pub d: D,
}

impl<D: AsRef<[u8]>> OwnedEvent<D> {
    /// The event, borrowing from this one.
    pub fn event(&self) -> Event<'_> {
        Event {
            epoch: self.epoch,
            seq: self.seq,
            received_at: self.received_at,
            t: &self.t,
            guild_id: self.guild_id,
            guild_create: self.marker,
            d: self.d.as_ref(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lends_every_field() {
        let o = OwnedEvent {
            epoch: 1,
            seq: 2,
            received_at: 3,
            t: "GUILD_CREATE".to_owned(),
            guild_id: Some(4),
            marker: Some(GuildCreateKind::Joined),
            d: "{}".to_owned(),
        };
        let e = o.event();
        assert_eq!(
            (e.epoch, e.seq, e.received_at, e.t),
            (1, 2, 3, "GUILD_CREATE")
        );
        assert_eq!(e.guild_id, Some(4));
        assert_eq!(e.guild_create, Some(GuildCreateKind::Joined));
        assert_eq!(e.d, b"{}");
    }
}

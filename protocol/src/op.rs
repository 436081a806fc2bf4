//! Gateway v10 opcodes (PROTOCOL.md, "Opcodes"): what a client and the
//! server send in a payload's `op`.

/// An event (server).
pub const DISPATCH: u8 = 0;
/// A heartbeat (client), or a request for one (server).
pub const HEARTBEAT: u8 = 1;
/// Starts a new session (client).
pub const IDENTIFY: u8 = 2;
/// Updates the client's presence (client).
pub const PRESENCE_UPDATE: u8 = 3;
/// Joins, moves or leaves a voice channel (client).
pub const VOICE_STATE_UPDATE: u8 = 4;
/// Resumes a session (client).
pub const RESUME: u8 = 6;
/// Reconnect and resume now (server).
pub const RECONNECT: u8 = 7;
/// Asks for a guild's members (client).
pub const REQUEST_GUILD_MEMBERS: u8 = 8;
/// The session is invalid; `d` says whether it can be resumed (server).
pub const INVALID_SESSION: u8 = 9;
/// The first payload, with the heartbeat interval (server).
pub const HELLO: u8 = 10;
/// A heartbeat was received (server).
pub const HEARTBEAT_ACK: u8 = 11;
/// Asks for guilds' soundboard sounds (client).
pub const REQUEST_SOUNDBOARD_SOUNDS: u8 = 31;

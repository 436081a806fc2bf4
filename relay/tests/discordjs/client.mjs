// A bot's gateway client as discord.js runs it (@discordjs/ws with
// @discordjs/rest), pointed at the relay: REST's `api` is the relay's HTTP
// base, so GET /gateway/bot comes from the relay and every shard connects
// to the URL it returns. Each dispatch is written to stdout as one JSON
// line {shard, t, s, d} for the Rust test to check; the process ends when
// stdin closes.
//
// Environment: RELAY_HTTP (http://127.0.0.1:PORT), BOT_TOKEN, INTENTS,
// SHARD_COUNT, COMPRESSION ("zlib" for zlib-stream through node:zlib, or
// empty for none).
import { REST } from '@discordjs/rest';
import { CompressionMethod, WebSocketManager, WebSocketShardEvents } from '@discordjs/ws';

const rest = new REST({ api: `${process.env.RELAY_HTTP}/api`, version: '10' }).setToken(
  process.env.BOT_TOKEN,
);
const manager = new WebSocketManager({
  token: process.env.BOT_TOKEN,
  intents: Number(process.env.INTENTS),
  shardCount: Number(process.env.SHARD_COUNT),
  compression: process.env.COMPRESSION === 'zlib' ? CompressionMethod.ZlibNative : null,
  rest,
});

manager.on(WebSocketShardEvents.Dispatch, (payload, shard) => {
  process.stdout.write(`${JSON.stringify({ shard, t: payload.t, s: payload.s, d: payload.d })}\n`);
});
manager.on(WebSocketShardEvents.Error, (error, shard) => {
  process.stderr.write(`shard ${shard}: ${error}\n`);
});

process.stdin.resume();
process.stdin.on('end', async () => {
  await manager.destroy();
  process.exit(0);
});

await manager.connect();

//! Simulated encoders: what a contribution encoder pushing to a live event makes Media Services
//! raise on Event Grid.
//!
//! An encoder is driven through `/_emulator/encoders/{liveEvent}` (connect, disconnect, degrade,
//! recover) and follows its live event: a stop disconnects it (`MPI_REST_API_CHANNEL_STOP`) and
//! ends its heartbeats, a reset disconnects it (`MPI_REST_API_CHANNEL_RESET`), a delete forgets it.
//! While the live event is Running, every track has an `LiveEventIngestHeartbeat` each
//! `heartbeat_interval`, from the first connection on, connected or not (the real service's rule).
//!
//! Encoders are not ARM state: they live beside the accounts in the `World`, behind its mutex.
//! Requests change them; the heartbeat task only reads the live events (their state at that
//! instant, without settling them) and adds heartbeats.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::media::model::LiveEventState;

use tokio_util::sync::CancellationToken;

use super::events::{MediaEvent, Outbox, Stamp};
use super::state::{Account, AccountId, LiveEventChange, LiveEventEntry, World};
use super::{Emulator, Error, lock};

/// Bitrate of the simulated video track, in bits per second.
pub const VIDEO_BITRATE: u64 = 2_500_000;
/// Bitrate of the simulated audio track, in bits per second.
pub const AUDIO_BITRATE: u64 = 128_000;
/// A degraded encoder sends this share of each track's bitrate, in percent.
const DEGRADED_PERCENT: u64 = 20;
/// The simulated encoder's address.
const ENCODER_IP: &str = "127.0.0.1";

const CONNECTION_REJECTED: &str = "Microsoft.Media.LiveEventConnectionRejected";
const ENCODER_CONNECTED: &str = "Microsoft.Media.LiveEventEncoderConnected";
const ENCODER_DISCONNECTED: &str = "Microsoft.Media.LiveEventEncoderDisconnected";
const STREAM_RECEIVED: &str = "Microsoft.Media.LiveEventIncomingStreamReceived";
const INGEST_HEARTBEAT: &str = "Microsoft.Media.LiveEventIngestHeartbeat";

/// `resultCode` of a connection to a live event that is not Running. The documentation lists no
/// code for this case (the real ingest endpoint does not answer); this one is the emulator's.
pub const NOT_RUNNING_CODE: &str = "MPE_INGEST_CHANNEL_NOT_RUNNING";

/// What to do with a live event's encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EncoderAction {
    /// Connect and send both tracks at their bitrate.
    Connect,
    /// Disconnect (the encoder ends its session).
    Disconnect,
    /// Keep the connection but send 20% of each track's bitrate.
    Degrade,
    /// Send the full bitrate again.
    Recover,
}

/// Where an encoder stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EncoderState {
    Connected,
    Degraded,
    Disconnected,
}

/// One encoder, as `/_emulator/encoders` returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EncoderStatus {
    /// `subscription/resourceGroup/account`, spelled as first used.
    pub account: String,
    pub live_event: String,
    pub state: EncoderState,
    /// `RTMP` or `FragmentedMP4`, the live event's ingest protocol.
    pub protocol: String,
    pub ingest_url: String,
    pub stream_id: String,
    pub encoder_ip: String,
    pub encoder_port: String,
    /// The `resultCode` of the last disconnection.
    pub result_code: Option<String>,
    /// Whether heartbeats are being sent (the live event runs and has had an encoder since it started).
    pub heartbeating: bool,
    /// Heartbeat rounds sent so far (one heartbeat per track each round).
    pub heartbeats: u64,
    pub tracks: Vec<TrackStatus>,
}

/// One track of an encoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrackStatus {
    pub track_type: String,
    pub track_name: String,
    pub bitrate: u64,
    /// What the next heartbeat reports.
    pub incoming_bitrate: u64,
}

/// The live event's ingest protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Rtmp,
    FragmentedMp4,
}

impl Protocol {
    fn of(entry: &LiveEventEntry) -> Self {
        let protocol = entry.resource.properties.input.as_ref().and_then(|input| input.streaming_protocol.as_deref());
        if protocol == Some("RTMP") { Self::Rtmp } else { Self::FragmentedMp4 }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Rtmp => "RTMP",
            Self::FragmentedMp4 => "FragmentedMP4",
        }
    }

    /// Units per second of the timestamps (FLV counts milliseconds, Smooth ingest 100 ns ticks).
    fn timescale(self) -> u64 {
        match self {
            Self::Rtmp => 1000,
            Self::FragmentedMp4 => 10_000_000,
        }
    }

    /// `resultCode` when the encoder itself ends the session.
    fn client_disconnect_code(self) -> &'static str {
        match self {
            Self::Rtmp => "MPE_CLIENT_TERMINATED_SESSION",
            Self::FragmentedMp4 => "MPE_CLIENT_DISCONNECTED",
        }
    }

    /// The tracks a connection brings: RTMP track names are generated as `<trackType>_<bitrate>`.
    fn tracks(self) -> Vec<Track> {
        [("video", VIDEO_BITRATE), ("audio", AUDIO_BITRATE)]
            .into_iter()
            .map(|(kind, bitrate)| Track {
                kind,
                name: match self {
                    Self::Rtmp => format!("{kind}_{bitrate}"),
                    Self::FragmentedMp4 => kind.to_string(),
                },
                bitrate,
            })
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Track {
    kind: &'static str,
    name: String,
    bitrate: u64,
}

/// One live event's encoder.
#[derive(Debug)]
struct Encoder {
    account: AccountId,
    live_event: String,
    protocol: Protocol,
    ingest_url: String,
    stream_id: String,
    encoder_port: String,
    state: EncoderState,
    result_code: Option<String>,
    /// Empty until the first connection; cleared when the live event stops.
    tracks: Vec<Track>,
    /// The live event's first transcription language, reported on the audio track.
    transcription: Option<String>,
    /// Media received so far, in milliseconds; it advances while connected.
    media_ms: u64,
    /// When `media_ms` was last brought up to date.
    media_at: Instant,
    /// Wall-clock time of the last fragment received.
    last_fragment: String,
    /// The next heartbeat round; `None` when heartbeats are off.
    next_heartbeat: Option<Instant>,
    heartbeats: u64,
}

/// Time and settings for one change.
#[derive(Debug)]
pub(crate) struct Tick<'a> {
    pub now: Instant,
    pub stamp: &'a Stamp,
    pub interval: Duration,
}

/// Every live event's encoder, by (account key, lowercase live event name).
#[derive(Debug, Default)]
pub(crate) struct Encoders {
    encoders: BTreeMap<(String, String), Encoder>,
}

impl Encoders {
    /// Applies `action` to the encoder of `live_event` (in `account`, `subscription/group/name`,
    /// needed only when several accounts have a live event of that name). The accounts are
    /// settled by the caller.
    pub fn act(
        &mut self,
        accounts: &BTreeMap<String, Account>,
        outbox: &mut Outbox,
        account: Option<&str>,
        live_event: &str,
        action: EncoderAction,
        tick: &Tick<'_>,
    ) -> Result<EncoderStatus, Error> {
        let event_key = live_event.to_lowercase();
        let wanted = account.map(str::to_lowercase);
        let mut found = accounts.iter().filter_map(|(key, account)| {
            let matches = wanted.as_ref().is_none_or(|wanted| wanted == key);
            let entry = account.live_events.get(&event_key).filter(|_| matches)?;
            Some((key, account, entry))
        });
        let (account_key, account, entry) = match (found.next(), found.next()) {
            (Some(one), None) => one,
            (None, _) => return Err(Error::LiveEventNotFound { name: live_event.to_string() }),
            (Some(_), Some(_)) => return Err(Error::AmbiguousLiveEvent { name: live_event.to_string() }),
        };
        let key = (account_key.clone(), event_key);
        let state = entry.resource.properties.resource_state.clone().unwrap_or(LiveEventState::Stopped);
        let running = state == LiveEventState::Running && entry.pending.is_none();
        let name = entry.resource.name.clone().unwrap_or_else(|| live_event.to_string());
        let not_running = || Error::LiveEventNotRunning { name: name.clone(), state: state.to_string() };
        match action {
            EncoderAction::Connect => {
                if !running {
                    let rejected = Encoder::new(&account.id, entry, tick);
                    let data = json!({
                        "ingestUrl": rejected.ingest_url,
                        "streamId": rejected.stream_id,
                        "encoderIp": ENCODER_IP,
                        "encoderPort": rejected.encoder_port,
                        "resultCode": NOT_RUNNING_CODE,
                    });
                    outbox.push(rejected.event(CONNECTION_REJECTED, tick, data), tick.stamp);
                    return Err(not_running());
                }
                let encoder = self.encoders.entry(key).or_insert_with(|| Encoder::new(&account.id, entry, tick));
                if encoder.state == EncoderState::Disconnected {
                    encoder.connect(entry, outbox, tick);
                }
                Ok(encoder.status())
            }
            EncoderAction::Disconnect => match self.encoders.get_mut(&key) {
                Some(encoder) => {
                    if encoder.state != EncoderState::Disconnected {
                        let code = encoder.protocol.client_disconnect_code();
                        encoder.disconnect(code, outbox, tick);
                    }
                    Ok(encoder.status())
                }
                // Never connected: already disconnected.
                None => Ok(Encoder::new(&account.id, entry, tick).status()),
            },
            EncoderAction::Degrade | EncoderAction::Recover => {
                if !running {
                    return Err(not_running());
                }
                let encoder = self
                    .encoders
                    .get_mut(&key)
                    .filter(|encoder| encoder.state != EncoderState::Disconnected)
                    .ok_or_else(|| Error::EncoderNotConnected { name: name.clone() })?;
                encoder.advance(tick);
                encoder.state = match action {
                    EncoderAction::Degrade => EncoderState::Degraded,
                    _ => EncoderState::Connected,
                };
                Ok(encoder.status())
            }
        }
    }

    /// Follows a live event's lifecycle (called in the request that changed it).
    pub fn live_event_changed(
        &mut self,
        account: &Account,
        change: &LiveEventChange,
        outbox: &mut Outbox,
        tick: &Tick<'_>,
    ) {
        let account_key = account.id.key();
        let (name, code) = match change {
            LiveEventChange::Stopped(name) | LiveEventChange::Deleted(name) => (name, "MPI_REST_API_CHANNEL_STOP"),
            LiveEventChange::Reset(name) => (name, "MPI_REST_API_CHANNEL_RESET"),
        };
        let key = (account_key, name.to_lowercase());
        let Some(encoder) = self.encoders.get_mut(&key) else {
            return;
        };
        if encoder.state != EncoderState::Disconnected {
            encoder.disconnect(code, outbox, tick);
        }
        match change {
            // The live event restarts: the tracks stay and keep beating, without data.
            LiveEventChange::Reset(_) => {}
            // A stopped live event has no tracks until an encoder connects after its next start.
            LiveEventChange::Stopped(_) => {
                encoder.tracks.clear();
                encoder.next_heartbeat = None;
            }
            LiveEventChange::Deleted(_) => {
                self.encoders.remove(&key);
            }
        }
    }

    /// Sends the heartbeat rounds that are due; true when it added events.
    pub fn beat(&mut self, accounts: &BTreeMap<String, Account>, outbox: &mut Outbox, tick: &Tick<'_>) -> bool {
        let mut sent = false;
        let mut gone = Vec::new();
        for (key, encoder) in &mut self.encoders {
            let Some(due) = encoder.next_heartbeat.filter(|due| *due <= tick.now) else {
                continue;
            };
            let entry = accounts.get(&key.0).and_then(|account| account.live_events.get(&key.1));
            let Some(state) = entry.and_then(|entry| state_at(entry, tick.now)) else {
                gone.push(key.clone());
                continue;
            };
            match state {
                LiveEventState::Running => {
                    encoder.advance(tick);
                    for track in encoder.tracks.clone() {
                        let data = encoder.heartbeat(&track);
                        outbox.push(encoder.event(INGEST_HEARTBEAT, tick, data), tick.stamp);
                        sent = true;
                    }
                    encoder.heartbeats += 1;
                }
                // Restarting (reset) or stopping: no heartbeat this round.
                LiveEventState::Starting | LiveEventState::Stopping => {}
                // Not running without a stop seen (cannot happen through the API): heartbeats end.
                _ => {
                    if encoder.state != EncoderState::Disconnected {
                        encoder.disconnect("MPI_REST_API_CHANNEL_STOP", outbox, tick);
                    }
                    encoder.tracks.clear();
                    encoder.next_heartbeat = None;
                    continue;
                }
            }
            let next = due + tick.interval;
            encoder.next_heartbeat = Some(if next <= tick.now { tick.now + tick.interval } else { next });
        }
        for key in gone {
            self.encoders.remove(&key);
        }
        sent
    }

    /// When the next heartbeat round is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.encoders.values().filter_map(|encoder| encoder.next_heartbeat).min()
    }

    pub fn statuses(&self) -> Vec<EncoderStatus> {
        self.encoders.values().map(Encoder::status).collect()
    }

    pub fn clear(&mut self) {
        self.encoders.clear();
    }
}

impl Encoder {
    fn new(account: &AccountId, entry: &LiveEventEntry, tick: &Tick<'_>) -> Self {
        let protocol = Protocol::of(entry);
        let input = entry.resource.properties.input.as_ref();
        let ingest_url = input
            .and_then(|input| input.endpoints.as_ref())
            .and_then(|endpoints| endpoints.iter().find_map(|endpoint| endpoint.url.clone()))
            .unwrap_or_default();
        let transcription = entry
            .resource
            .properties
            .transcriptions
            .as_ref()
            .and_then(|transcriptions| transcriptions.first())
            .and_then(|first| first.get("language"))
            .and_then(Value::as_str)
            .map(str::to_string);
        let port = ephemeral_port();
        Self {
            account: account.clone(),
            live_event: entry.resource.name.clone().unwrap_or_default(),
            protocol,
            ingest_url,
            stream_id: format!("{port}-stream0"),
            encoder_port: port.to_string(),
            state: EncoderState::Disconnected,
            result_code: None,
            tracks: Vec::new(),
            transcription,
            media_ms: 0,
            media_at: tick.now,
            last_fragment: String::new(),
            next_heartbeat: None,
            heartbeats: 0,
        }
    }

    /// Connects: `LiveEventEncoderConnected`, then `LiveEventIncomingStreamReceived` per track.
    fn connect(&mut self, entry: &LiveEventEntry, outbox: &mut Outbox, tick: &Tick<'_>) {
        let fresh = Self::new(&self.account, entry, tick);
        self.ingest_url = fresh.ingest_url;
        self.stream_id = fresh.stream_id;
        self.encoder_port = fresh.encoder_port;
        self.transcription = fresh.transcription;
        self.tracks = self.protocol.tracks();
        self.state = EncoderState::Connected;
        self.media_at = tick.now;
        self.last_fragment.clone_from(&tick.stamp.wall);
        let data = json!({
            "ingestUrl": self.ingest_url,
            "streamId": self.stream_id,
            "encoderIp": ENCODER_IP,
            "encoderPort": self.encoder_port,
        });
        outbox.push(self.event(ENCODER_CONNECTED, tick, data), tick.stamp);
        let timescale = self.protocol.timescale();
        let stream_url = match self.protocol {
            Protocol::Rtmp => format!("{}/{}", self.ingest_url, self.stream_id),
            Protocol::FragmentedMp4 => format!("{}/Streams({})", self.ingest_url, self.stream_id),
        };
        for track in self.tracks.clone() {
            let data = json!({
                "ingestUrl": stream_url,
                "trackType": track.kind,
                "trackName": track.name,
                "bitrate": track.bitrate,
                "encoderIp": ENCODER_IP,
                "encoderPort": self.encoder_port,
                "timestamp": (self.media_ms * timescale / 1000).to_string(),
                "duration": (2 * timescale).to_string(),
                "timescale": timescale.to_string(),
            });
            outbox.push(self.event(STREAM_RECEIVED, tick, data), tick.stamp);
        }
        if self.next_heartbeat.is_none() {
            self.next_heartbeat = Some(tick.now + tick.interval);
        }
    }

    /// Disconnects with `code`: `LiveEventEncoderDisconnected`.
    fn disconnect(&mut self, code: &str, outbox: &mut Outbox, tick: &Tick<'_>) {
        self.advance(tick);
        self.state = EncoderState::Disconnected;
        self.result_code = Some(code.to_string());
        let data = json!({
            "ingestUrl": self.ingest_url,
            "streamId": self.stream_id,
            "encoderIp": ENCODER_IP,
            "encoderPort": self.encoder_port,
            "resultCode": code,
        });
        outbox.push(self.event(ENCODER_DISCONNECTED, tick, data), tick.stamp);
    }

    /// Brings the media timeline up to `tick.now`: it advances while connected.
    fn advance(&mut self, tick: &Tick<'_>) {
        if self.state != EncoderState::Disconnected {
            let elapsed = tick.now.saturating_duration_since(self.media_at);
            self.media_ms = self.media_ms.saturating_add(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX));
            self.last_fragment.clone_from(&tick.stamp.wall);
        }
        self.media_at = tick.now;
    }

    /// What the next heartbeat reports for `track`: near the bitrate (within 2%) when connected,
    /// a fifth of it when degraded, nothing when disconnected.
    fn incoming_bitrate(&self, track: &Track) -> u64 {
        match self.state {
            EncoderState::Connected => track.bitrate - track.bitrate / 100 * (self.heartbeats % 3),
            EncoderState::Degraded => track.bitrate * DEGRADED_PERCENT / 100,
            EncoderState::Disconnected => 0,
        }
    }

    /// The `LiveEventIngestHeartbeat` data of one track, computed by the documented rules.
    fn heartbeat(&self, track: &Track) -> Value {
        let incoming = self.incoming_bitrate(track);
        let (overlap, discontinuity, nonincreasing) = (0u64, 0u64, 0u64);
        let unexpected = unexpected_bitrate(incoming, track.bitrate);
        let healthy = overlap == 0 && discontinuity == 0 && nonincreasing == 0 && !unexpected;
        let timescale = self.protocol.timescale();
        let receiving = self.state != EncoderState::Disconnected;
        let (transcription_state, transcription_language) = match (&self.transcription, track.kind) {
            (Some(language), "audio") => ("On", language.as_str()),
            _ => ("", ""),
        };
        json!({
            "trackType": track.kind,
            "trackName": track.name,
            "bitrate": track.bitrate,
            "incomingBitrate": incoming,
            "lastTimestamp": (self.media_ms * timescale / 1000).to_string(),
            "timescale": timescale.to_string(),
            "overlapCount": overlap,
            "discontinuityCount": discontinuity,
            "nonincreasingCount": nonincreasing,
            "unexpectedBitrate": unexpected,
            "state": "Running",
            "healthy": healthy,
            "lastFragmentArrivalTime": self.last_fragment,
            "ingestDriftValue": if receiving { "0" } else { "n/a" },
            "transcriptionState": transcription_state,
            "transcriptionLanguage": transcription_language,
        })
    }

    fn event(&self, event_type: &str, tick: &Tick<'_>, data: Value) -> MediaEvent {
        MediaEvent::new(
            self.account.base(),
            format!("liveEvent/{}", self.live_event),
            event_type,
            &tick.stamp.wall,
            data,
        )
    }

    fn status(&self) -> EncoderStatus {
        EncoderStatus {
            account: format!("{}/{}/{}", self.account.subscription, self.account.resource_group, self.account.name),
            live_event: self.live_event.clone(),
            state: self.state,
            protocol: self.protocol.name().into(),
            ingest_url: self.ingest_url.clone(),
            stream_id: self.stream_id.clone(),
            encoder_ip: ENCODER_IP.into(),
            encoder_port: self.encoder_port.clone(),
            result_code: self.result_code.clone(),
            heartbeating: self.next_heartbeat.is_some(),
            heartbeats: self.heartbeats,
            tracks: self
                .tracks
                .iter()
                .map(|track| TrackStatus {
                    track_type: track.kind.into(),
                    track_name: track.name.clone(),
                    bitrate: track.bitrate,
                    incoming_bitrate: self.incoming_bitrate(track),
                })
                .collect(),
        }
    }
}

/// Sends heartbeat rounds as they fall due, until `shutdown`.
pub(crate) async fn heartbeats(emulator: Emulator, shutdown: CancellationToken) {
    let interval = emulator.settings().events.heartbeat_interval;
    let wake = &emulator.inner.wake_heartbeats;
    loop {
        let due = lock(&emulator.inner.world).encoders.next_due();
        let sleep = match due {
            Some(at) => tokio::time::sleep_until(at),
            None => tokio::time::sleep(Duration::from_secs(3600)),
        };
        tokio::select! {
            _ = sleep => {}
            _ = wake.notified() => continue,
            _ = shutdown.cancelled() => return,
        }
        let stamp = emulator.stamp();
        let tick = Tick { now: Instant::now(), stamp: &stamp, interval };
        let sent = {
            let mut world = lock(&emulator.inner.world);
            let World { accounts, encoders, outbox, .. } = &mut *world;
            encoders.beat(accounts, outbox, &tick)
        };
        if sent {
            emulator.inner.wake_deliveries.notify_one();
        }
    }
}

/// The documented rule: `incomingBitrate >= 2*bitrate || incomingBitrate <= bitrate/2 || incomingBitrate == 0`.
pub(crate) fn unexpected_bitrate(incoming: u64, bitrate: u64) -> bool {
    incoming == 0 || incoming >= bitrate.saturating_mul(2) || incoming <= bitrate / 2
}

/// The live event's state at `now`, read without settling it; `None` once it is deleted.
fn state_at(entry: &LiveEventEntry, now: Instant) -> Option<LiveEventState> {
    match &entry.pending {
        Some(pending) => pending.phase_at(now).or_else(|| pending.outcome().state.clone()),
        None => entry.resource.properties.resource_state.clone(),
    }
}

/// An ephemeral port for the simulated encoder's side of the connection.
fn ephemeral_port() -> u16 {
    let [high, low, ..] = *uuid::Uuid::new_v4().as_bytes();
    49_152 + u16::from_be_bytes([high, low]) % 16_384
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unexpected_bitrate_follows_the_documented_rule() {
        let bitrate = 2_500_000;
        assert!(!unexpected_bitrate(2_462_597, bitrate));
        assert!(unexpected_bitrate(0, bitrate));
        assert!(unexpected_bitrate(bitrate / 2, bitrate));
        assert!(!unexpected_bitrate(bitrate / 2 + 1, bitrate));
        assert!(unexpected_bitrate(bitrate * 2, bitrate));
        assert!(!unexpected_bitrate(bitrate * 2 - 1, bitrate));
        assert!(unexpected_bitrate(bitrate * DEGRADED_PERCENT / 100, bitrate));
    }

    #[test]
    fn rtmp_track_names_carry_the_bitrate() {
        let names = |protocol: Protocol| protocol.tracks().into_iter().map(|track| track.name).collect::<Vec<_>>();
        assert_eq!(names(Protocol::Rtmp), ["video_2500000", "audio_128000"]);
        assert_eq!(names(Protocol::FragmentedMp4), ["video", "audio"]);
    }

    #[test]
    fn ports_are_ephemeral() {
        for _ in 0..100 {
            assert!(ephemeral_port() >= 49_152);
        }
    }
}

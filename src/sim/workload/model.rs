//! A simulated client's model of its own stream, which only it writes: the next offset (when
//! known), the data checksum of each event it knows it appended, and the chain checksum of
//! each event as the first read reply showed it. Read replies are checked against it: a read
//! carries the commit of the client's latest write, so it must see exactly the client's
//! acknowledged events, with the data the client sent, and committed events never change. A
//! stale reply (an earlier read's, or one from a replica behind the client's writes) fails.

use zerocopy::{FromBytes, IntoBytes};

use crate::state_machine::types::{
    Event, EventRecord, ReadReplyHeader, ResultCode, StreamInfoReply, chain_next, chain_seed,
    record_next,
};
use crate::vsr::header::{self, Checksum};

pub struct StreamModel {
    pub stream: u64,
    pub created: bool,
    /// The stream's next offset, if known (an append with an unknown outcome forgets it).
    pub offset_next: Option<u64>,
    /// Per offset: the event's `event_checksum`, if the client knows it appended it.
    data: Vec<Option<Checksum>>,
    /// Per offset: the event's chain checksum, once a read showed it.
    chains: Vec<Option<Checksum>>,
}

/// What one read reply showed, for the workload's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadChecked {
    /// Events of the client's own stream checked against the model.
    pub events: u64,
    /// The read met a grid block that failed verification (a storage fault, not a bug).
    pub block_corrupt: bool,
}

impl StreamModel {
    pub fn new(stream: u64) -> StreamModel {
        StreamModel {
            stream,
            created: false,
            offset_next: Some(0),
            data: Vec::new(),
            chains: Vec::new(),
        }
    }

    /// Whether the client creates its stream by its first append ("no stream"), rather than
    /// by create_stream: the streams with even ids.
    pub fn created_by_append(&self) -> bool {
        self.stream.is_multiple_of(2)
    }

    /// The stream's tenant: the stream id, given by create_stream; an append that creates its
    /// stream gives tenant 0.
    fn tenant(&self) -> u64 {
        if self.created_by_append() { 0 } else { self.stream }
    }

    /// An append of events with `checksums` was acknowledged at `offset`.
    pub fn appended(&mut self, offset: u64, checksums: &[Checksum]) {
        let end = offset as usize + checksums.len();
        if self.data.len() < end {
            self.data.resize(end, None);
        }
        for (index, checksum) in checksums.iter().enumerate() {
            self.data[offset as usize + index] = Some(*checksum);
        }
    }

    /// The chain after the event at `offset`, compared with what was seen before (committed
    /// events never change) or remembered.
    fn chain_seen(&mut self, offset: u64, chain: Checksum) -> Result<(), &'static str> {
        let index = offset as usize;
        if self.chains.len() <= index {
            self.chains.resize(index + 1, None);
        }
        match self.chains[index] {
            Some(known) if known != chain => Err("a read shows an event's chain changed"),
            _ => {
                self.chains[index] = Some(chain);
                Ok(())
            }
        }
    }

    /// The chain before the event at `offset`, if known.
    fn chain_before(&self, offset: u64) -> Option<Checksum> {
        match offset {
            0 => Some(chain_seed(self.stream, self.tenant())),
            _ => self.chains.get(offset as usize - 1).copied().flatten(),
        }
    }

    pub fn check_stream_info(&mut self, body: &[u8]) -> Result<ReadChecked, &'static str> {
        let Ok((info, _)) = StreamInfoReply::read_from_prefix(body) else {
            return Err("stream_info reply body too short");
        };
        if ResultCode::from_u32(info.result) != Some(ResultCode::Ok) {
            return Err("stream_info of the client's created stream failed");
        }
        if info.stream != self.stream || info.tenant != self.tenant() {
            return Err("stream_info answered for another stream");
        }
        if let Some(offset_next) = self.offset_next
            && info.offset_next != offset_next
        {
            return Err("stream_info disagrees with the client's acknowledged appends");
        }
        if info.offset_next == 0 {
            if info.chain.get() != (chain_seed(self.stream, self.tenant())).get() {
                return Err("stream_info of an empty stream has a chain other than its seed");
            }
        } else {
            self.chain_seen(info.offset_next - 1, Checksum::from(info.chain))?;
        }
        Ok(ReadChecked::default())
    }

    /// A read_stream reply for a read from `offset_from`.
    pub fn check_read_stream(
        &mut self,
        offset_from: u64,
        body: &[u8],
    ) -> Result<ReadChecked, &'static str> {
        let Ok((head, mut records)) = ReadReplyHeader::read_from_prefix(body) else {
            return Err("read reply body too short");
        };
        let mut checked = ReadChecked::default();
        match ResultCode::from_u32(head.result) {
            Some(ResultCode::Ok) => {}
            Some(ResultCode::BlockCorrupt) => checked.block_corrupt = true,
            _ => return Err("read_stream of the client's created stream failed"),
        }
        if let Some(offset_next) = self.offset_next
            && head.end != offset_next
        {
            return Err("read_stream disagrees with the client's acknowledged appends");
        }
        for index in 0..u64::from(head.event_count) {
            let (record, event, rest) = record_next(records)?;
            records = rest;
            if record.stream != self.stream || record.offset != offset_from + index {
                return Err("read_stream returned an event out of place");
            }
            self.check_event(&record, &event)?;
            checked.events += 1;
        }
        if head.next != offset_from + u64::from(head.event_count) {
            return Err("read_stream reply's next is not after its last event");
        }
        Ok(checked)
    }

    /// A read_log reply for a read from `position_from`: the events of this client's stream in
    /// it are checked.
    pub fn check_read_log(
        &mut self,
        position_from: u64,
        end_min: u64,
        body: &[u8],
    ) -> Result<ReadChecked, &'static str> {
        let Ok((head, mut records)) = ReadReplyHeader::read_from_prefix(body) else {
            return Err("read reply body too short");
        };
        let mut checked = ReadChecked::default();
        match ResultCode::from_u32(head.result) {
            Some(ResultCode::Ok) => {}
            Some(ResultCode::BlockCorrupt) => checked.block_corrupt = true,
            _ => return Err("read_log failed"),
        }
        if head.end < end_min {
            return Err("a linearizable read_log misses events acknowledged before it was sent");
        }
        for index in 0..u64::from(head.event_count) {
            let (record, event, rest) = record_next(records)?;
            records = rest;
            if record.position != position_from + index {
                return Err("read_log returned an event out of place");
            }
            if record.stream == self.stream {
                if self.offset_next.is_some_and(|offset_next| record.offset >= offset_next) {
                    return Err("read_log shows an event the client never appended");
                }
                self.check_event(&record, &event)?;
                checked.events += 1;
            }
        }
        Ok(checked)
    }

    /// One event of the client's stream: the type, metadata and data it appended, and a chain
    /// that follows the one before it and never changes.
    fn check_event(&mut self, record: &EventRecord, event: &Event<'_>) -> Result<(), &'static str> {
        if record.reserved != 0 {
            return Err("a read returned an event record whose reserved byte is not zero");
        }
        let known = self.data.get(record.offset as usize).copied().flatten();
        if known.is_some_and(|checksum| checksum != event_checksum(event)) {
            return Err("a read returned an event the client did not append at that offset");
        }
        if let Some(chain) = self.chain_before(record.offset)
            && chain_next(chain, record, event) != Checksum::from(record.chain)
        {
            return Err("a read returned an event whose chain does not follow its stream's");
        }
        self.chain_seen(record.offset, Checksum::from(record.chain))
    }
}

/// What the model remembers of an event it appended: the checksum of its sizes, type,
/// metadata and data.
pub fn event_checksum(event: &Event<'_>) -> Checksum {
    let header = event.header();
    header::checksum_pieces(&[header.as_bytes(), event.event_type, event.metadata, event.data])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vsr::header::ChecksumBytes;

    fn stream_info(model: &StreamModel, offset_next: u64, chain: Checksum) -> Vec<u8> {
        let info = StreamInfoReply {
            result: ResultCode::Ok as u32,
            reserved: 0,
            stream: model.stream,
            tenant: model.stream,
            offset_next,
            event_count: offset_next,
            chain: ChecksumBytes::from(chain),
            grid_used_bytes: 0,
            grid_room_bytes: 0,
        };
        info.as_bytes().to_vec()
    }

    fn event(data: &[u8]) -> Event<'_> {
        Event { event_type: b"t", metadata: b"m", data }
    }

    /// A read_stream reply of one event at `offset` with `data`, chained from `chain`.
    fn read_stream_one(model: &StreamModel, offset: u64, chain: Checksum, data: &[u8]) -> Vec<u8> {
        let header = event(data).header();
        let mut record = EventRecord {
            stream: model.stream,
            offset,
            position: offset,
            timestamp: 1,
            chain: ChecksumBytes::ZERO,
            data_size: header.data_size,
            metadata_size: header.metadata_size,
            type_size: header.type_size,
            reserved: 0,
        };
        record.chain = ChecksumBytes::from(chain_next(chain, &record, &event(data)));
        let head = ReadReplyHeader { result: 0, event_count: 1, next: offset + 1, end: 1 };
        let mut bytes = head.as_bytes().to_vec();
        bytes.extend_from_slice(record.as_bytes());
        bytes.extend_from_slice(b"tm");
        bytes.extend_from_slice(data);
        bytes.resize(bytes.len().next_multiple_of(8), 0);
        bytes
    }

    #[test]
    fn stale_or_wrong_read_replies_contradict_the_model() {
        // Goal: what a stale reply taken for a later read would look like is caught: a
        // stream_info behind the client's acknowledged append, an event with other data than
        // the client appended, and a chain that changed; the consistent replies pass.
        let mut model = StreamModel::new(3);
        model.created = true;
        let seed = chain_seed(3, 3);
        assert!(model.check_stream_info(&stream_info(&model, 0, seed)).is_ok());
        model.appended(0, &[event_checksum(&event(b"abc"))]);
        model.offset_next = Some(1);
        assert!(model.check_stream_info(&stream_info(&model, 0, seed)).is_err());
        let good = read_stream_one(&model, 0, seed, b"abc");
        assert_eq!(model.check_read_stream(0, &good).map(|read| read.events), Ok(1));
        let other_data = read_stream_one(&model, 0, seed, b"abd");
        assert!(model.check_read_stream(0, &other_data).is_err());
        assert!(model.check_stream_info(&stream_info(&model, 1, Checksum(12345))).is_err());
    }
}

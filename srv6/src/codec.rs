//! IPv6 header and Segment Routing Header codec (RFC 8200 §3, RFC 8754 §2).
//!
//! The node daemon builds every H.Encaps header here once per policy; the eBPF headend only
//! copies the bytes and fixes the payload length and flow label per packet.

use std::net::Ipv6Addr;

use thiserror::Error;

pub const IPV6_HEADER_LEN: usize = 40;
pub const SRH_FIXED_LEN: usize = 8;
/// IPv6 next-header values used on the wire.
pub const NEXT_HEADER_IPV4: u8 = 4;
pub const NEXT_HEADER_IPV6: u8 = 41;
pub const NEXT_HEADER_ROUTING: u8 = 43;
/// Routing type of the SRH (RFC 8754 §2).
pub const ROUTING_TYPE_SRH: u8 = 4;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("truncated: need {need} bytes, have {have}")]
    Truncated { need: usize, have: usize },
    #[error("not IPv6: version {0}")]
    NotIpv6(u8),
    #[error("routing type {0} is not SRH (4)")]
    NotSrh(u8),
    #[error("SRH Last Entry {last_entry} does not fit Hdr Ext Len {hdr_ext_len}")]
    LastEntryOverflow { last_entry: u8, hdr_ext_len: u8 },
    #[error("SRH Segments Left {segments_left} exceeds Last Entry {last_entry}")]
    SegmentsLeftOverflow { segments_left: u8, last_entry: u8 },
    #[error("segment list is empty")]
    EmptySegmentList,
    #[error("segment list of {0} exceeds the maximum of {max}", max = crate::MAX_SEGMENTS)]
    TooManySegments(usize),
    #[error("TLV area of {0} bytes is not a multiple of 8")]
    UnalignedTlvs(usize),
}

/// The fixed IPv6 header (RFC 8200 §3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv6Header {
    pub traffic_class: u8,
    pub flow_label: u32,
    pub payload_len: u16,
    pub next_header: u8,
    pub hop_limit: u8,
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
}

impl Ipv6Header {
    pub fn encode(&self, out: &mut Vec<u8>) {
        let vtf: u32 = (6 << 28) | ((self.traffic_class as u32) << 20) | (self.flow_label & 0xf_ffff);
        out.extend_from_slice(&vtf.to_be_bytes());
        out.extend_from_slice(&self.payload_len.to_be_bytes());
        out.push(self.next_header);
        out.push(self.hop_limit);
        out.extend_from_slice(&self.src.octets());
        out.extend_from_slice(&self.dst.octets());
    }

    pub fn decode(buf: &[u8]) -> Result<Self, CodecError> {
        need(buf, IPV6_HEADER_LEN)?;
        let vtf = u32::from_be_bytes(buf[0..4].try_into().unwrap());
        if vtf >> 28 != 6 {
            return Err(CodecError::NotIpv6((vtf >> 28) as u8));
        }
        Ok(Self {
            traffic_class: ((vtf >> 20) & 0xff) as u8,
            flow_label: vtf & 0xf_ffff,
            payload_len: u16::from_be_bytes([buf[4], buf[5]]),
            next_header: buf[6],
            hop_limit: buf[7],
            src: addr_at(buf, 8),
            dst: addr_at(buf, 24),
        })
    }
}

/// A Segment Routing Header. `segments` is in wire order: `segments[0]` is the *last* segment
/// of the path (RFC 8754 §2), and the active segment is `segments[segments_left]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Srh {
    pub next_header: u8,
    pub segments_left: u8,
    pub flags: u8,
    pub tag: u16,
    pub segments: Vec<Ipv6Addr>,
    /// Raw TLV area (padded to 8 octets), kept opaque.
    pub tlvs: Vec<u8>,
}

impl Srh {
    /// An SRH for a path given in travel order (first segment first), with Segments Left
    /// pointing at the first segment, as H.Encaps builds it (RFC 8986 §5.1).
    pub fn for_path(path: &[Ipv6Addr], next_header: u8) -> Result<Self, CodecError> {
        if path.is_empty() {
            return Err(CodecError::EmptySegmentList);
        }
        if path.len() > crate::MAX_SEGMENTS {
            return Err(CodecError::TooManySegments(path.len()));
        }
        Ok(Self {
            next_header,
            segments_left: (path.len() - 1) as u8,
            flags: 0,
            tag: 0,
            segments: path.iter().rev().copied().collect(),
            tlvs: Vec::new(),
        })
    }

    pub fn last_entry(&self) -> u8 {
        (self.segments.len() - 1) as u8
    }

    /// Length on the wire in octets.
    pub fn wire_len(&self) -> usize {
        SRH_FIXED_LEN + 16 * self.segments.len() + self.tlvs.len()
    }

    pub fn active_segment(&self) -> Option<Ipv6Addr> {
        self.segments.get(self.segments_left as usize).copied()
    }

    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        if self.segments.is_empty() {
            return Err(CodecError::EmptySegmentList);
        }
        if !self.tlvs.len().is_multiple_of(8) {
            return Err(CodecError::UnalignedTlvs(self.tlvs.len()));
        }
        if self.segments_left > self.last_entry() {
            return Err(CodecError::SegmentsLeftOverflow { segments_left: self.segments_left, last_entry: self.last_entry() });
        }
        out.push(self.next_header);
        out.push(((self.wire_len() - SRH_FIXED_LEN) / 8) as u8);
        out.push(ROUTING_TYPE_SRH);
        out.push(self.segments_left);
        out.push(self.last_entry());
        out.push(self.flags);
        out.extend_from_slice(&self.tag.to_be_bytes());
        for s in &self.segments {
            out.extend_from_slice(&s.octets());
        }
        out.extend_from_slice(&self.tlvs);
        Ok(())
    }

    /// Decodes and validates an SRH (RFC 8754 §4.3.1, §3.1): routing type 4, Last Entry within
    /// Hdr Ext Len, Segments Left within Last Entry. Returns the header and its length.
    pub fn decode(buf: &[u8]) -> Result<(Self, usize), CodecError> {
        need(buf, SRH_FIXED_LEN)?;
        let hdr_ext_len = buf[1];
        let len = SRH_FIXED_LEN + 8 * hdr_ext_len as usize;
        need(buf, len)?;
        if buf[2] != ROUTING_TYPE_SRH {
            return Err(CodecError::NotSrh(buf[2]));
        }
        let (segments_left, last_entry) = (buf[3], buf[4]);
        let segs_len = 16 * (last_entry as usize + 1);
        if SRH_FIXED_LEN + segs_len > len {
            return Err(CodecError::LastEntryOverflow { last_entry, hdr_ext_len });
        }
        if segments_left > last_entry {
            return Err(CodecError::SegmentsLeftOverflow { segments_left, last_entry });
        }
        let segments = (0..=last_entry as usize).map(|i| addr_at(buf, SRH_FIXED_LEN + 16 * i)).collect();
        Ok((
            Self {
                next_header: buf[0],
                segments_left,
                flags: buf[5],
                tag: u16::from_be_bytes([buf[6], buf[7]]),
                segments,
                tlvs: buf[SRH_FIXED_LEN + segs_len..len].to_vec(),
            },
            len,
        ))
    }
}

/// The outer IPv6 header + SRH that H.Encaps pushes (RFC 8986 §5.1) for `path` (travel order).
/// Payload length and flow label are left zero: the datapath sets them per packet.
pub fn encaps_header(src: Ipv6Addr, path: &[Ipv6Addr], inner: u8, hop_limit: u8) -> Result<Vec<u8>, CodecError> {
    let srh = Srh::for_path(path, inner)?;
    let mut out = Vec::with_capacity(IPV6_HEADER_LEN + srh.wire_len());
    Ipv6Header { traffic_class: 0, flow_label: 0, payload_len: 0, next_header: NEXT_HEADER_ROUTING, hop_limit, src, dst: path[0] }
        .encode(&mut out);
    srh.encode(&mut out)?;
    Ok(out)
}

/// Parses an outer IPv6 header immediately followed by an SRH.
pub fn decode_srv6(buf: &[u8]) -> Result<(Ipv6Header, Srh, usize), CodecError> {
    let ip = Ipv6Header::decode(buf)?;
    if ip.next_header != NEXT_HEADER_ROUTING {
        return Err(CodecError::NotSrh(0));
    }
    let (srh, len) = Srh::decode(&buf[IPV6_HEADER_LEN..])?;
    Ok((ip, srh, IPV6_HEADER_LEN + len))
}

fn need(buf: &[u8], n: usize) -> Result<(), CodecError> {
    if buf.len() < n {
        return Err(CodecError::Truncated { need: n, have: buf.len() });
    }
    Ok(())
}

/// The Internet checksum's one's-complement sum (RFC 1071) of `data`, added to `sum` (a previous
/// result, e.g. of a pseudo-header: it must have covered an even number of bytes) and folded to
/// 16 bits; an odd tail is zero-padded. The checksum field is `!sum`; a packet whose checksum
/// is right sums to 0xffff.
pub fn ones_complement_sum(data: &[u8], sum: u32) -> u32 {
    let mut sum = sum as u64 + data.chunks(2).map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u64).sum::<u64>();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u32
}

fn addr_at(buf: &[u8], off: usize) -> Ipv6Addr {
    Ipv6Addr::from(<[u8; 16]>::try_from(&buf[off..off + 16]).unwrap())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    #[test]
    fn ones_complement_sum_follows_rfc1071() {
        // RFC 1071 §3's example: 0001 f203 f4f5 f6f7 sums to 0xddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(ones_complement_sum(&data, 0), 0xddf2);
        // In two parts, the first even; an odd tail is padded with zero.
        assert_eq!(ones_complement_sum(&data[4..], ones_complement_sum(&data[..4], 0)), 0xddf2);
        assert_eq!(ones_complement_sum(&[0xab], 0), 0xab00);
        // An IPv4 header with its checksum in place sums to 0xffff.
        let mut ip = [0x45, 0, 0, 0x20, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 1, 0, 1, 10, 5, 0, 1];
        let c = !(ones_complement_sum(&ip, 0) as u16);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        assert_eq!(ones_complement_sum(&ip, 0), 0xffff);
    }

    #[test]
    fn encaps_header_layout_matches_rfc8754() {
        let path = [a("fcbb:bb00:1:e001::"), a("fcbb:bb00:2:e001::"), a("fcbb:bb00:2:d6::")];
        let h = encaps_header(a("fcbb:bb00:1::1"), &path, NEXT_HEADER_IPV6, 64).unwrap();
        assert_eq!(h.len(), 40 + 8 + 48);
        assert_eq!(h[0] >> 4, 6);
        assert_eq!(h[6], NEXT_HEADER_ROUTING);
        assert_eq!(h[7], 64);
        assert_eq!(&h[24..40], &path[0].octets(), "DA is the first segment");
        let srh = &h[40..];
        assert_eq!(srh[0], NEXT_HEADER_IPV6);
        assert_eq!(srh[1], 6, "Hdr Ext Len counts 8-octet units after the first 8");
        assert_eq!(srh[2], 4);
        assert_eq!(srh[3], 2, "Segments Left points at the first segment");
        assert_eq!(srh[4], 2, "Last Entry");
        assert_eq!(&srh[8..24], &path[2].octets(), "Segment List[0] is the last segment");
        assert_eq!(&srh[40..56], &path[0].octets());
    }

    #[test]
    fn roundtrip() {
        let path = [a("fc00::1"), a("fc00::2")];
        let h = encaps_header(a("fc00::ff"), &path, NEXT_HEADER_IPV4, 7).unwrap();
        let (ip, srh, len) = decode_srv6(&h).unwrap();
        assert_eq!(len, h.len());
        assert_eq!(ip.dst, path[0]);
        assert_eq!(ip.hop_limit, 7);
        assert_eq!(srh.active_segment(), Some(path[0]));
        assert_eq!(srh.next_header, NEXT_HEADER_IPV4);
        let mut again = Vec::new();
        ip.encode(&mut again);
        srh.encode(&mut again).unwrap();
        assert_eq!(again, h);
    }

    #[test]
    fn tlvs_survive_and_must_be_aligned() {
        let mut srh = Srh::for_path(&[a("fc00::1")], NEXT_HEADER_IPV6).unwrap();
        srh.tlvs = vec![1, 6, 0, 0, 0, 0, 0, 0];
        let mut buf = Vec::new();
        srh.encode(&mut buf).unwrap();
        let (back, len) = Srh::decode(&buf).unwrap();
        assert_eq!((back, len), (srh.clone(), 32));
        srh.tlvs.pop();
        assert_eq!(srh.encode(&mut Vec::new()), Err(CodecError::UnalignedTlvs(7)));
    }

    #[test]
    fn malformed_srh_is_rejected() {
        let mut buf = Vec::new();
        Srh::for_path(&[a("fc00::1"), a("fc00::2")], 41).unwrap().encode(&mut buf).unwrap();
        let mut bad = buf.clone();
        bad[2] = 0;
        assert_eq!(Srh::decode(&bad).unwrap_err(), CodecError::NotSrh(0));
        let mut bad = buf.clone();
        bad[4] = 2; // three entries claimed, two present
        assert!(matches!(Srh::decode(&bad), Err(CodecError::LastEntryOverflow { .. })));
        let mut bad = buf.clone();
        bad[3] = 2;
        assert!(matches!(Srh::decode(&bad), Err(CodecError::SegmentsLeftOverflow { .. })));
        assert!(matches!(Srh::decode(&buf[..30]), Err(CodecError::Truncated { need: 40, .. })));
        assert!(matches!(Srh::decode(&buf[..5]), Err(CodecError::Truncated { need: 8, .. })));
    }

    #[test]
    fn path_length_is_bounded() {
        assert_eq!(Srh::for_path(&[], 41), Err(CodecError::EmptySegmentList));
        let long = vec![a("fc00::1"); crate::MAX_SEGMENTS + 1];
        assert_eq!(Srh::for_path(&long, 41), Err(CodecError::TooManySegments(9)));
    }

    #[test]
    fn ipv6_header_fields() {
        let h = Ipv6Header {
            traffic_class: 0xb8,
            flow_label: 0xabcde,
            payload_len: 1234,
            next_header: 17,
            hop_limit: 3,
            src: a("::1"),
            dst: a("::2"),
        };
        let mut buf = Vec::new();
        h.encode(&mut buf);
        assert_eq!(&buf[0..4], &[0x6b, 0x8a, 0xbc, 0xde]);
        assert_eq!(Ipv6Header::decode(&buf).unwrap(), h);
        buf[0] = 0x45;
        assert_eq!(Ipv6Header::decode(&buf), Err(CodecError::NotIpv6(4)));
    }
}

//! Frames the generator sends (pure): inner UDP with a 12-byte payload, as the seed paper
//! measures, plain or behind an outer IPv6 header + SRH (H.Encaps) or with an inserted SRH
//! (End.AM). Checksums are real, so a VNF that checks them forwards every frame.

use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::Context;
use srv6::codec::{encaps_header, ones_complement_sum, Ipv6Header, Srh, NEXT_HEADER_ROUTING};

/// Its last four bytes are where the generator marks a frame's side (`Frame::mark_off`).
pub const PAYLOAD: [u8; 12] = *b"srv6pipe\x00\x00\xff\xff";
/// The last four bytes of an unmarked frame: the generator's mark m makes them 00 m+1 ff
/// ff-(m+1), which leaves the sum of the two 16-bit words, hence the UDP checksum, as it is.
const MARK_TAIL: [u8; 4] = [0, 0, 0xff, 0xff];
pub const UDP_PORTS: (u16, u16) = (40000, 9);
const ETH_LEN: usize = 14;
const IP6_LEN: usize = 40;

#[derive(Clone, Copy, Debug)]
pub struct Macs {
    pub src: [u8; 6],
    pub dst: [u8; 6],
}

#[derive(Clone, Copy, Debug)]
pub enum Inner {
    V6 { src: Ipv6Addr, dst: Ipv6Addr },
    V4 { src: Ipv4Addr, dst: Ipv4Addr },
}

/// A frame and where the generator may rewrite its destination to spread traffic.
#[derive(Clone, Debug)]
pub struct Frame {
    pub bytes: Vec<u8>,
    /// Offset of the (outer) IPv6 destination.
    pub da_off: u32,
    /// Offset of the SRH entry that mirrors it (the active segment); 0 when there is none.
    pub seg_off: u32,
}

impl Frame {
    /// Where the generator writes the mark: the last four bytes, the inner UDP payload's.
    pub fn mark_off(&self) -> anyhow::Result<u32> {
        let off = self.bytes.len().checked_sub(MARK_TAIL.len()).filter(|&o| self.bytes[o..] == MARK_TAIL);
        off.map(|o| o as u32).context("the frame does not end with the payload's mark")
    }
}

fn udp(pseudo: &[u8]) -> Vec<u8> {
    let len = (8 + PAYLOAD.len()) as u16;
    let mut u = Vec::with_capacity(len as usize);
    u.extend_from_slice(&UDP_PORTS.0.to_be_bytes());
    u.extend_from_slice(&UDP_PORTS.1.to_be_bytes());
    u.extend_from_slice(&len.to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(&PAYLOAD);
    let mut c = !(ones_complement_sum(&u, ones_complement_sum(pseudo, 0)) as u16);
    if c == 0 {
        c = 0xffff;
    }
    u[6..8].copy_from_slice(&c.to_be_bytes());
    u
}

/// UDP over IPv6 towards `final_dst` (the checksum's destination, RFC 8200 §8.1), preceded by
/// `ext` (extension headers, e.g. an inserted SRH) whose first next header is `ext_nh`.
fn ipv6_udp(src: Ipv6Addr, dst: Ipv6Addr, final_dst: Ipv6Addr, ext: &[u8], ext_nh: Option<u8>) -> Vec<u8> {
    let udp_len = (8 + PAYLOAD.len()) as u32;
    let mut pseudo = Vec::with_capacity(40);
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&final_dst.octets());
    pseudo.extend_from_slice(&udp_len.to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 17]);
    let u = udp(&pseudo);
    let mut out = Vec::with_capacity(IP6_LEN + ext.len() + u.len());
    Ipv6Header {
        traffic_class: 0,
        flow_label: 0,
        payload_len: (ext.len() + u.len()) as u16,
        next_header: ext_nh.unwrap_or(17),
        hop_limit: 64,
        src,
        dst,
    }
    .encode(&mut out);
    out.extend_from_slice(ext);
    out.extend_from_slice(&u);
    out
}

fn ipv4_udp(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let udp_len = (8 + PAYLOAD.len()) as u16;
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&udp_len.to_be_bytes());
    let u = udp(&pseudo);
    let total = (20 + u.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]); // id 0, DF, TTL 64, UDP
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let c = !(ones_complement_sum(&ip, 0) as u16);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip.extend_from_slice(&u);
    ip
}

fn inner_packet(inner: Inner) -> (Vec<u8>, u8) {
    match inner {
        Inner::V6 { src, dst } => (ipv6_udp(src, dst, dst, &[], None), 41),
        Inner::V4 { src, dst } => (ipv4_udp(src, dst), 4),
    }
}

fn ethernet(macs: Macs, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(ETH_LEN + payload.len());
    f.extend_from_slice(&macs.dst);
    f.extend_from_slice(&macs.src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The inner packet alone (plain forwarding).
pub fn plain(macs: Macs, inner: Inner) -> Frame {
    let (pkt, _) = inner_packet(inner);
    let ethertype = if matches!(inner, Inner::V4 { .. }) { 0x0800 } else { 0x86dd };
    Frame { bytes: ethernet(macs, ethertype, &pkt), da_off: (ETH_LEN + 24) as u32, seg_off: 0 }
}

/// H.Encaps of `inner` from `outer_src` along `path` (travel order): what a headend sends.
pub fn encapsulated(macs: Macs, outer_src: Ipv6Addr, path: &[Ipv6Addr], inner: Inner) -> anyhow::Result<Frame> {
    let (pkt, nh) = inner_packet(inner);
    let mut hdr = encaps_header(outer_src, path, nh, 64)?;
    let payload_len = (hdr.len() - IP6_LEN + pkt.len()) as u16;
    hdr[4..6].copy_from_slice(&payload_len.to_be_bytes());
    hdr.extend_from_slice(&pkt);
    // The active segment is the SRH's last entry (Segments Left = n - 1).
    let seg_off = ETH_LEN + IP6_LEN + 8 + 16 * (path.len() - 1);
    Ok(Frame { bytes: ethernet(macs, 0x86dd, &hdr), da_off: (ETH_LEN + 24) as u32, seg_off: seg_off as u32 })
}

/// A packet from `src` to `dst` with an SRH inserted for `sids` (travel order) before `dst`:
/// what srv6pipes' H.Insert headend sends towards End.AM functions.
pub fn inserted(macs: Macs, src: Ipv6Addr, sids: &[Ipv6Addr], dst: Ipv6Addr) -> anyhow::Result<Frame> {
    let mut path = sids.to_vec();
    path.push(dst);
    let mut srh = Vec::new();
    Srh::for_path(&path, 17)?.encode(&mut srh)?;
    let pkt = ipv6_udp(src, path[0], dst, &srh, Some(NEXT_HEADER_ROUTING));
    let seg_off = ETH_LEN + IP6_LEN + 8 + 16 * (path.len() - 1);
    Ok(Frame { bytes: ethernet(macs, 0x86dd, &pkt), da_off: (ETH_LEN + 24) as u32, seg_off: seg_off as u32 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use srv6::codec::decode_srv6;

    const MACS: Macs = Macs { src: [2, 0, 0, 0, 0, 1], dst: [2, 0, 0, 0, 0, 2] };

    fn a(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    /// A valid checksum sums (with the pseudo header) to 0xffff.
    fn udp_ok_v6(src: Ipv6Addr, dst: Ipv6Addr, udp: &[u8]) -> bool {
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&src.octets());
        pseudo.extend_from_slice(&dst.octets());
        pseudo.extend_from_slice(&(udp.len() as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, 17]);
        ones_complement_sum(udp, ones_complement_sum(&pseudo, 0)) == 0xffff
    }

    #[test]
    fn plain_v6_has_a_valid_udp_checksum_and_12_byte_payload() {
        let (s, d) = (a("2001:db8::1"), a("2001:db8:5::1"));
        let f = plain(MACS, Inner::V6 { src: s, dst: d });
        assert_eq!(f.bytes.len(), 14 + 40 + 8 + 12);
        assert_eq!(&f.bytes[12..14], &[0x86, 0xdd]);
        assert_eq!(&f.bytes[f.da_off as usize..f.da_off as usize + 16], &d.octets());
        assert!(udp_ok_v6(s, d, &f.bytes[54..]));
        let mut bad = f.bytes[54..].to_vec();
        bad[10] ^= 1;
        assert!(!udp_ok_v6(s, d, &bad), "the check must notice a flipped bit");
    }

    #[test]
    fn a_marked_frame_keeps_its_udp_checksum_and_its_mark_is_its_last_four_bytes() {
        let (s, d) = (a("2001:db8::1"), a("2001:db8:5::1"));
        let f = encapsulated(MACS, a("fcbb:bb00:99::1"), &[a("fcbb:bb00:1:e000::")], Inner::V6 { src: s, dst: d }).unwrap();
        let off = f.mark_off().unwrap() as usize;
        assert_eq!(off, f.bytes.len() - 4);
        let inner_udp = 14 + 40 + 8 + 16 + 40;
        // What bench_gen writes for each side (bench.bpf.c put_mark).
        for m in 1..=3u8 {
            let mut b = f.bytes.clone();
            (b[off + 1], b[off + 3]) = (m, 0xff - m);
            assert!(udp_ok_v6(s, d, &b[inner_udp..]), "mark {m}");
        }
        let mut other = f.clone();
        other.bytes.push(0);
        assert!(other.mark_off().is_err(), "a frame not ending with the mark's bytes cannot be marked");
    }

    #[test]
    fn encapsulated_frame_decodes_with_the_active_segment_at_seg_off() {
        let path = [a("fcbb:bb00:1:e000::"), a("fcbb:bb00:ff::d6")];
        let inner = Inner::V6 { src: a("2001:db8::1"), dst: a("2001:db8:5::1") };
        let f = encapsulated(MACS, a("fcbb:bb00:99::1"), &path, inner).unwrap();
        let (ip, srh, hlen) = decode_srv6(&f.bytes[14..]).unwrap();
        assert_eq!(ip.dst, path[0]);
        assert_eq!(ip.payload_len as usize, f.bytes.len() - 14 - 40);
        assert_eq!(srh.active_segment(), Some(path[0]));
        assert_eq!(srh.next_header, 41);
        let so = f.seg_off as usize;
        assert_eq!(&f.bytes[so..so + 16], &path[0].octets());
        assert_eq!(hlen, 40 + 8 + 32);
        assert_eq!(f.bytes.len(), 14 + hlen + 60);
    }

    #[test]
    fn inner_ipv4_header_checksum_is_valid() {
        let f = encapsulated(
            MACS,
            a("fcbb:bb00:99::1"),
            &[a("fcbb:bb00:1::1"), a("fcbb:bb00:ff::d6")],
            Inner::V4 { src: "10.0.0.1".parse().unwrap(), dst: "10.0.5.1".parse().unwrap() },
        )
        .unwrap();
        let ip4 = &f.bytes[14 + 80..14 + 100];
        assert_eq!(ip4[0], 0x45);
        assert_eq!(ones_complement_sum(ip4, 0), 0xffff);
        assert_eq!(f.bytes[14 + 40], 4, "SRH next header: IPv4");
    }

    #[test]
    fn inserted_srh_keeps_the_final_destination_last_and_checksums_against_it() {
        let (s, sid, d) = (a("fcbb:bb00:99::1"), a("fcbb:bb00:1:e000::"), a("2001:db8:5::1"));
        let f = inserted(MACS, s, &[sid], d).unwrap();
        let (ip, srh, hlen) = decode_srv6(&f.bytes[14..]).unwrap();
        assert_eq!(ip.dst, sid);
        assert_eq!(srh.segments[0], d, "the final destination is the last segment");
        assert_eq!(srh.next_header, 17);
        assert!(udp_ok_v6(s, d, &f.bytes[14 + hlen..]));
        assert!(!udp_ok_v6(s, sid, &f.bytes[14 + hlen..]));
    }
}

// Ogg framing for an Opus stream (RFC 3533 pages, RFC 7845 Opus mapping): just enough to wrap
// the WebCodecs encoder's packets for the server and to unwrap the server's pages for the decoder.

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let i = 0; i < 256; i++) {
    let r = i << 24;
    for (let j = 0; j < 8; j++) r = r & 0x80000000 ? (r << 1) ^ 0x04c11db7 : r << 1;
    table[i] = r >>> 0;
  }
  return table;
})();

function oggCrc(bytes) {
  let crc = 0;
  for (let i = 0; i < bytes.length; i++) crc = ((crc << 8) ^ CRC_TABLE[((crc >>> 24) ^ bytes[i]) & 0xff]) >>> 0;
  return crc >>> 0;
}

const FLAG_CONTINUED = 0x01;
const FLAG_FIRST = 0x02;

export class OggOpusWriter {
  // Each call returns complete pages; the first one carries the OpusHead and OpusTags pages.
  constructor(sampleRate = 24000, serial = 0x6475706c) {
    this.sampleRate = sampleRate;
    this.serial = serial;
    this.sequence = 0;
    this.granule = 0; // always counted at 48 kHz in Ogg Opus
    this.headersSent = false;
  }

  page(packets, flags, granule) {
    const lacing = [];
    for (const packet of packets) {
      let left = packet.length;
      while (left >= 255) { lacing.push(255); left -= 255; }
      lacing.push(left);
    }
    const bodyLength = packets.reduce((n, p) => n + p.length, 0);
    const page = new Uint8Array(27 + lacing.length + bodyLength);
    const view = new DataView(page.buffer);
    page.set([0x4f, 0x67, 0x67, 0x53], 0); // "OggS"
    page[4] = 0;
    page[5] = flags;
    view.setBigInt64(6, BigInt(granule), true);
    view.setUint32(14, this.serial, true);
    view.setUint32(18, this.sequence++, true);
    view.setUint32(22, 0, true);
    page[26] = lacing.length;
    page.set(lacing, 27);
    let offset = 27 + lacing.length;
    for (const packet of packets) { page.set(packet, offset); offset += packet.length; }
    view.setUint32(22, oggCrc(page), true);
    return page;
  }

  headers() {
    const head = new Uint8Array(19);
    const view = new DataView(head.buffer);
    head.set(new TextEncoder().encode("OpusHead"), 0);
    head[8] = 1; // version
    head[9] = 1; // channels
    view.setUint16(10, 312, true); // pre-skip at 48 kHz, the usual libopus look-ahead
    view.setUint32(12, this.sampleRate, true);
    view.setInt16(16, 0, true);
    head[18] = 0; // mapping family
    const vendor = new TextEncoder().encode("duplex-web");
    const tags = new Uint8Array(8 + 4 + vendor.length + 4);
    tags.set(new TextEncoder().encode("OpusTags"), 0);
    new DataView(tags.buffer).setUint32(8, vendor.length, true);
    tags.set(vendor, 12);
    return [this.page([head], FLAG_FIRST, 0), this.page([tags], 0, 0)];
  }

  // packets: Uint8Array[]; samples: how many samples (at this.sampleRate) they hold together.
  write(packets, samples) {
    const pages = this.headersSent ? [] : this.headers();
    this.headersSent = true;
    this.granule += Math.round((samples * 48000) / this.sampleRate);
    pages.push(this.page(packets, 0, this.granule));
    return concat(pages);
  }
}

export class OggOpusReader {
  // Feed any slices of an Ogg stream; returns the Opus audio packets completed so far.
  constructor() {
    this.buffer = new Uint8Array(0);
    this.partial = [];
  }

  push(bytes) {
    this.buffer = concat([this.buffer, bytes]);
    const packets = [];
    for (;;) {
      const b = this.buffer;
      if (b.length < 27) break;
      if (b[0] !== 0x4f || b[1] !== 0x67 || b[2] !== 0x67 || b[3] !== 0x53) {
        throw new Error("not an Ogg stream (bad capture pattern)");
      }
      const segments = b[26];
      if (b.length < 27 + segments) break;
      let bodyLength = 0;
      for (let i = 0; i < segments; i++) bodyLength += b[27 + i];
      const pageLength = 27 + segments + bodyLength;
      if (b.length < pageLength) break;
      if (!(b[5] & FLAG_CONTINUED)) this.partial = [];
      let offset = 27 + segments;
      for (let i = 0; i < segments; i++) {
        const size = b[27 + i];
        this.partial.push(b.subarray(offset, offset + size));
        offset += size;
        if (size < 255) {
          const packet = concat(this.partial);
          this.partial = [];
          if (!isHeader(packet)) packets.push(packet);
        }
      }
      this.buffer = b.slice(pageLength);
    }
    return packets;
  }
}

function isHeader(packet) {
  if (packet.length < 8) return false;
  const magic = String.fromCharCode(...packet.subarray(0, 8));
  return magic === "OpusHead" || magic === "OpusTags";
}

export function concat(arrays) {
  const total = arrays.reduce((n, a) => n + a.length, 0);
  const out = new Uint8Array(total);
  let offset = 0;
  for (const a of arrays) { out.set(a, offset); offset += a.length; }
  return out;
}

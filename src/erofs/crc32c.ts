// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78) as the EROFS superblock checksum uses it: the raw
// register value, seeded with ~0 and without the final inversion (the kernel's crc32c(~0, ...)).
const POLY = 0x82f63b78;

const TABLE: Uint32Array = (() => {
  const t = new Uint32Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ POLY : c >>> 1;
    t[i] = c >>> 0;
  }
  return t;
})();

/** The CRC-32C register after `data`, starting from `seed`, with no final xor. */
export function crc32cRaw(seed: number, data: Uint8Array): number {
  let c = seed >>> 0;
  for (let i = 0; i < data.length; i++) c = TABLE[(c ^ data[i]!) & 0xff]! ^ (c >>> 8);
  return c >>> 0;
}

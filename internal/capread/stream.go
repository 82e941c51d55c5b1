// SPDX-License-Identifier: Apache-2.0

package capread

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// errBadBlock is what counter returns in place of the bytes of a pcapng
// block that the walker found corrupt.
var errBadBlock = errors.New("corrupt pcapng block")

// counter counts the bytes read from r and remembers the first error, so
// that, with the bufio.Reader above it, the reader knows how far pcapgo
// got when it fails. Every chunk read is also shown to ng, if set; the
// stream stops before a block ng finds corrupt, so pcapgo never reads it
// (it would, for example, allocate the 4 GiB a corrupt captured length
// asks for).
type counter struct {
	r   io.Reader
	n   int64
	err error
	ng  *ngWalker
}

func (c *counter) Read(p []byte) (int, error) {
	if c.ng != nil && c.ng.err != nil {
		return 0, c.fail(errBadBlock)
	}
	n, err := c.r.Read(p)
	if c.ng != nil && n > 0 {
		c.ng.observe(p[:n])
		if c.ng.err != nil {
			n = int(min(int64(n), max(c.ng.start-c.n, 0)))
			err = errBadBlock
		}
	}
	c.n += int64(n)
	if err != nil {
		c.fail(err)
	}
	return n, err
}

func (c *counter) fail(err error) error {
	if c.err == nil {
		c.err = err
	}
	return err
}

// ended reports whether the underlying stream has ended, cleanly or not.
func (c *counter) ended() bool {
	return errors.Is(c.err, io.EOF) || errors.Is(c.err, io.ErrUnexpectedEOF)
}

// pcapng block types and sizes the walker cares about.
const (
	ngSectionHeader  = 0x0a0d0d0a
	ngInterface      = 0x00000001
	ngPacketObsolete = 0x00000002
	ngSimplePacket   = 0x00000003
	ngEnhancedPacket = 0x00000006
	ngByteOrderMagic = 0x1a2b3c4d
	ngBlockHeaderLen = 12 // type, length, and the first body word
	ngMinBlockLen    = 12 // type, length, trailing length
	// Enhanced (and obsolete) packet blocks: the captured length is at
	// offset 20, and the block has 32 bytes besides the data.
	ngPacketHeaderLen = 24
	ngPacketMinLen    = 32
	// Simple packet blocks: 16 bytes besides the data.
	ngSimpleMinLen = 16
	// Interface description blocks: the snap length is at offset 12.
	ngInterfaceHeaderLen = 16
	ngInterfaceMinLen    = 20
)

// ngSection is a pcapng section: where it starts and its interfaces' link
// types and snap lengths, in interface-ID order.
type ngSection struct {
	start     int64
	linkTypes []LinkType
	snapLens  []int64
}

// ngWalker follows pcapng block boundaries in the raw byte stream, ahead
// of pcapgo (which reads the same bytes later, through a bufio.Reader).
// It gives what pcapgo does not: interfaces' full 16-bit link types
// (pcapgo truncates them to 8 bits), whether the stream ended inside a
// block (pcapgo reports a plain io.EOF), and a check of block and
// captured lengths before pcapgo trusts them.
type ngWalker struct {
	pos      int64 // bytes seen
	start    int64 // start of the current block
	length   int64 // its total length, 0 while its header is incomplete
	typ      uint32
	hdr      [ngPacketHeaderLen]byte
	order    binary.ByteOrder
	sections []ngSection
	packets  int   // complete packet blocks seen
	err      error // a corrupt block, at start; the walker stops there
	// stamps are the raw timestamps of the packet blocks seen and not yet
	// returned, in order (see Reader.ngTime).
	stamps []ngStamp
}

// ngStamp is a packet block's raw timestamp, in its interface's units; a
// simple packet block has none (ok false).
type ngStamp struct {
	ts uint64
	ok bool
}

// need returns how many bytes of the current block the walker reads: the
// common header, then what body() needs.
func (w *ngWalker) need() int64 {
	if w.length != 0 {
		switch w.typ {
		case ngEnhancedPacket, ngPacketObsolete:
			return ngPacketHeaderLen
		case ngInterface:
			return ngInterfaceHeaderLen
		}
	}
	return ngBlockHeaderLen
}

// observe advances the walker over the next bytes of the stream.
func (w *ngWalker) observe(b []byte) {
	for w.err == nil && len(b) > 0 {
		if got := w.pos - w.start; got < w.need() {
			n := copy(w.hdr[got:w.need()], b)
			w.pos += int64(n)
			b = b[n:]
			if w.pos-w.start < w.need() {
				return
			}
			if w.length == 0 {
				if w.header(); w.err == nil && w.need() == ngBlockHeaderLen {
					w.body()
				}
			} else {
				w.body()
			}
			if w.err != nil {
				return
			}
		} else {
			n := min(int64(len(b)), w.start+w.length-w.pos)
			w.pos += n
			b = b[n:]
		}
		if w.pos == w.start+w.length {
			switch w.typ {
			case ngPacketObsolete, ngSimplePacket, ngEnhancedPacket:
				w.packets++
			}
			w.start, w.length = w.pos, 0
		}
	}
}

// header reads the first 12 bytes of a block, now in w.hdr: its type and
// length.
func (w *ngWalker) header() {
	if binary.LittleEndian.Uint32(w.hdr[0:4]) == ngSectionHeader {
		switch {
		case binary.BigEndian.Uint32(w.hdr[8:12]) == ngByteOrderMagic:
			w.order = binary.BigEndian
		case binary.LittleEndian.Uint32(w.hdr[8:12]) == ngByteOrderMagic:
			w.order = binary.LittleEndian
		default:
			w.err = fmt.Errorf("section header block at offset %d has no byte-order magic", w.start)
			return
		}
		w.sections = append(w.sections, ngSection{start: w.start})
	}
	if w.order == nil {
		w.err = fmt.Errorf("block at offset %d comes before any section header block", w.start)
		return
	}
	w.typ = w.order.Uint32(w.hdr[0:4])
	length := int64(w.order.Uint32(w.hdr[4:8]))
	minLen := int64(ngMinBlockLen)
	switch w.typ {
	case ngEnhancedPacket, ngPacketObsolete:
		minLen = ngPacketMinLen
	case ngSimplePacket:
		minLen = ngSimpleMinLen
	case ngInterface:
		minLen = ngInterfaceMinLen
	}
	if length < minLen {
		w.err = fmt.Errorf("block at offset %d has length %d, below the minimum of %d", w.start, length, minLen)
		return
	}
	w.length = length
}

// body reads the start of a block's body, now in w.hdr: interfaces' link
// types and snap lengths, and packets' captured lengths, which must fit
// in their block.
func (w *ngWalker) body() {
	s := &w.sections[len(w.sections)-1]
	capLen, room := int64(0), int64(0)
	switch w.typ {
	case ngInterface:
		s.linkTypes = append(s.linkTypes, LinkType(w.order.Uint16(w.hdr[8:10])))
		s.snapLens = append(s.snapLens, int64(w.order.Uint32(w.hdr[12:16])))
		return
	case ngEnhancedPacket, ngPacketObsolete:
		capLen, room = int64(w.order.Uint32(w.hdr[20:24])), w.length-ngPacketMinLen
		w.stamps = append(w.stamps, ngStamp{uint64(w.order.Uint32(w.hdr[12:16]))<<32 | uint64(w.order.Uint32(w.hdr[16:20])), true})
	case ngSimplePacket:
		w.stamps = append(w.stamps, ngStamp{})
		// pcapgo captures the original length, cut to the first
		// interface's snap length if it has one.
		capLen, room = int64(w.order.Uint32(w.hdr[8:12])), w.length-ngSimpleMinLen
		if len(s.snapLens) > 0 && s.snapLens[0] != 0 {
			capLen = min(capLen, s.snapLens[0])
		}
	default:
		return
	}
	if capLen > room {
		w.err = fmt.Errorf("packet block at offset %d has %d captured bytes, more than its length of %d allows", w.start, capLen, w.length)
	}
}

// partial reports whether the bytes seen so far end inside a block, and
// how many of how many bytes of it there are (want is 0 when even its
// length is missing).
func (w *ngWalker) partial() (got, want int64, typ uint32, ok bool) {
	if w.pos == w.start {
		return 0, 0, 0, false
	}
	return w.pos - w.start, w.length, w.typ, true
}

// section returns the section that holds stream offset pos - 1 (the last
// byte consumed), and forgets the ones before it.
func (w *ngWalker) section(pos int64) *ngSection {
	i := len(w.sections) - 1
	for i > 0 && w.sections[i].start >= pos {
		i--
	}
	if i < 0 {
		return nil
	}
	w.sections = w.sections[i:]
	return &w.sections[0]
}

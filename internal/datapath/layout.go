package datapath

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
)

// The pinned state describes itself: next to its maps, a pool pins a map
// named "layout" holding, as JSON, the shape of every map's key and value
// (fields by name, offsets, sizes) as the netslotd that pinned them saw
// them. A netslotd whose maps have another layout reads it and migrates
// each changed map on start: it builds a map of the new layout, copies
// every entry field by name (a field that went is dropped, a new one
// starts at zero), pins it in the old one's place, then loads its programs
// and swaps them in on the held links, so that leases keep forwarding
// through the upgrade.

const layoutPin = "layout"

// layoutBytes bounds the JSON of a pool's layout (the layout map's value).
const layoutBytes = 32 << 10

// shape is the layout of a type in a map's key or value.
type shape struct {
	Kind   string  `json:"kind"` // "int", "struct" or "array"
	Size   uint32  `json:"size"`
	Fields []field `json:"fields,omitempty"` // struct
	Len    uint32  `json:"len,omitempty"`    // array
	Elem   *shape  `json:"elem,omitempty"`   // array
}

type field struct {
	Name  string `json:"name"`
	Off   uint32 `json:"off"`
	Shape *shape `json:"shape"`
}

// mapLayout is one map's layout.
type mapLayout struct {
	Type      string `json:"type"`
	KeySize   uint32 `json:"key_size"`
	ValueSize uint32 `json:"value_size"`
	Flags     uint32 `json:"flags"`
	Key       *shape `json:"key,omitempty"`
	Value     *shape `json:"value,omitempty"`
}

// shapeOf describes t; nil for what it cannot (then a changed map of that
// type cannot be migrated).
func shapeOf(t btf.Type) *shape {
	t = btf.UnderlyingType(t)
	size, err := btf.Sizeof(t)
	if err != nil {
		return nil
	}
	switch v := t.(type) {
	case *btf.Int, *btf.Enum:
		return &shape{Kind: "int", Size: uint32(size)}
	case *btf.Array:
		elem := shapeOf(v.Type)
		if elem == nil {
			return nil
		}
		return &shape{Kind: "array", Size: uint32(size), Len: v.Nelems, Elem: elem}
	case *btf.Struct:
		s := &shape{Kind: "struct", Size: uint32(size)}
		for _, m := range v.Members {
			ms := shapeOf(m.Type)
			if ms == nil || m.BitfieldSize != 0 || m.Offset%8 != 0 {
				return nil
			}
			s.Fields = append(s.Fields, field{Name: m.Name, Off: uint32(m.Offset / 8), Shape: ms})
		}
		return s
	}
	return nil
}

// layoutOf describes the maps of spec, as they are pinned.
func layoutOf(spec *ebpf.CollectionSpec) map[string]mapLayout {
	out := map[string]mapLayout{}
	for name, m := range spec.Maps {
		if m.Pinning != ebpf.PinByName {
			continue
		}
		l := mapLayout{Type: m.Type.String(), KeySize: m.KeySize, ValueSize: m.ValueSize, Flags: m.Flags}
		if m.Key != nil {
			l.Key = shapeOf(m.Key)
		}
		if m.Value != nil {
			l.Value = shapeOf(m.Value)
		}
		out[name] = l
	}
	return out
}

// readLayout returns the layout pinned in dir (nil, nil: none pinned).
func readLayout(dir string) (map[string]mapLayout, error) {
	m, err := ebpf.LoadPinnedMap(filepath.Join(dir, layoutPin), nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("open pinned layout: %w", err)
	}
	defer m.Close()
	buf := make([]byte, m.ValueSize())
	if err := m.Lookup(uint32(0), &buf); err != nil {
		return nil, fmt.Errorf("read pinned layout: %w", err)
	}
	l, err := decodeLayout(buf)
	if err != nil {
		return nil, fmt.Errorf("pinned layout %s: %w", filepath.Join(dir, layoutPin), err)
	}
	return l, nil
}

// decodeLayout reads a layout map's value (JSON up to the first NUL) and
// checks every map's layout in it (see mapLayout.check): a migration
// trusts the offsets and sizes it is given.
func decodeLayout(b []byte) (map[string]mapLayout, error) {
	if n := slices.Index(b, 0); n >= 0 {
		b = b[:n]
	}
	var l map[string]mapLayout
	if err := json.Unmarshal(b, &l); err != nil {
		return nil, fmt.Errorf("decode: %w", err)
	}
	for _, name := range slices.Sorted(maps.Keys(l)) {
		if err := l[name].check(); err != nil {
			return nil, fmt.Errorf("map %s: %w", name, err)
		}
	}
	return l, nil
}

// What a layout may describe: the kernel's largest key (MAX_BPF_STACK)
// and value (KMALLOC_MAX_SIZE, an array's), and far more fields than a
// struct of bpf/ has.
const (
	maxKeySize   = 512
	maxValueSize = 4 << 20
	maxFields    = 256
)

// check reports what makes l a layout that no netslotd writes: a map of
// no type, sizes beyond the kernel's, or a key or value shape that is not
// of the key's or value's size or is not sound (see shape.check).
func (l mapLayout) check() error {
	switch {
	case l.Type == "":
		return errors.New("no map type")
	case l.KeySize > maxKeySize:
		return fmt.Errorf("%d-byte keys (the kernel's are at most %d)", l.KeySize, maxKeySize)
	case l.ValueSize > maxValueSize:
		return fmt.Errorf("%d-byte values (the kernel's are at most %d)", l.ValueSize, maxValueSize)
	}
	for _, part := range []struct {
		what  string
		shape *shape
		size  uint32
	}{{"key", l.Key, l.KeySize}, {"value", l.Value, l.ValueSize}} {
		if part.shape == nil {
			continue // not described: the map is not migrated
		}
		if err := part.shape.check(); err != nil {
			return fmt.Errorf("%s: %w", part.what, err)
		}
		if part.shape.Size != part.size {
			return fmt.Errorf("%s: a %d-byte %s for %d-byte %ss", part.what, part.shape.Size, part.shape.Kind, part.size, part.what)
		}
	}
	return nil
}

// check reports what makes s a shape that shapeOf does not make, and
// that a conversion could not read within s.Size bytes: an unknown kind;
// an integer of other than 1, 2, 4, 8 or 16 bytes; an array without its
// element's shape, with elements of no size, or whose elements do not
// fill it exactly; a struct field without a shape, past the struct's
// end, overlapping another, or with another's name; more than maxFields
// fields; members of another kind (an integer's fields, a struct's
// element).
func (s *shape) check() error {
	switch s.Kind {
	case "int":
		if len(s.Fields) > 0 || s.Elem != nil || s.Len != 0 {
			return errors.New("an int with fields or elements")
		}
		if s.Size != 1 && s.Size != 2 && s.Size != 4 && s.Size != 8 && s.Size != 16 {
			return fmt.Errorf("a %d-byte int", s.Size)
		}
	case "array":
		if len(s.Fields) > 0 {
			return errors.New("an array with fields")
		}
		if s.Elem == nil {
			return errors.New("an array without its element's shape")
		}
		if err := s.Elem.check(); err != nil {
			return fmt.Errorf("element: %w", err)
		}
		if s.Elem.Size == 0 || uint64(s.Len)*uint64(s.Elem.Size) != uint64(s.Size) {
			return fmt.Errorf("an array of %d %d-byte elements in %d bytes", s.Len, s.Elem.Size, s.Size)
		}
	case "struct":
		if s.Elem != nil || s.Len != 0 {
			return errors.New("a struct with elements")
		}
		if len(s.Fields) > maxFields {
			return fmt.Errorf("a struct of %d fields (at most %d)", len(s.Fields), maxFields)
		}
		named := map[string]bool{}
		for _, f := range s.Fields {
			if f.Shape == nil {
				return fmt.Errorf("field %q without a shape", f.Name)
			}
			if err := f.Shape.check(); err != nil {
				return fmt.Errorf("field %q: %w", f.Name, err)
			}
			if uint64(f.Off)+uint64(f.Shape.Size) > uint64(s.Size) {
				return fmt.Errorf("field %q of %d bytes at offset %d, past the struct's %d bytes", f.Name, f.Shape.Size, f.Off, s.Size)
			}
			if f.Name != "" && named[f.Name] {
				return fmt.Errorf("two fields named %q", f.Name)
			}
			named[f.Name] = true
		}
		// Fields of some size, in order of offset, each ending before the
		// next begins.
		sized := slices.DeleteFunc(slices.Clone(s.Fields), func(f field) bool { return f.Shape.Size == 0 })
		slices.SortFunc(sized, func(a, b field) int { return cmp.Compare(a.Off, b.Off) })
		for i := 1; i < len(sized); i++ {
			if a, b := sized[i-1], sized[i]; uint64(a.Off)+uint64(a.Shape.Size) > uint64(b.Off) {
				return fmt.Errorf("fields %q and %q overlap", a.Name, b.Name)
			}
		}
	default:
		return fmt.Errorf("a shape of kind %q", s.Kind)
	}
	return nil
}

// writeLayout pins l in dir, replacing what was there.
func writeLayout(dir string, l map[string]mapLayout) error {
	b, err := json.Marshal(l)
	if err != nil {
		return err
	}
	if len(b) >= layoutBytes {
		return fmt.Errorf("layout of %d bytes: at most %d", len(b), layoutBytes-1)
	}
	m, err := ebpf.NewMap(&ebpf.MapSpec{Name: layoutPin, Type: ebpf.Array, KeySize: 4, ValueSize: layoutBytes, MaxEntries: 1})
	if err != nil {
		return fmt.Errorf("layout map: %w", err)
	}
	defer m.Close()
	buf := make([]byte, layoutBytes)
	copy(buf, b)
	if err := m.Put(uint32(0), buf); err != nil {
		return fmt.Errorf("write layout: %w", err)
	}
	return pinOver(m, filepath.Join(dir, layoutPin))
}

// pinOver pins m at path in place of what is there, in one step: pinned
// beside it, then renamed over it, so that no crash leaves path empty.
func pinOver(m *ebpf.Map, path string) error {
	tmp := path + "_new" // bpffs refuses dots in names
	os.Remove(tmp)
	if err := m.Pin(tmp); err != nil {
		return fmt.Errorf("pin %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("pin %s: %w", path, err)
	}
	return nil
}

// migrate replaces every pinned map in dir whose layout differs from
// spec's (spec's sizes already set for the pool) by one of spec's layout
// holding the same entries, and returns their names. A layout pinned with
// them that is not sound (see decodeLayout) or does not describe a
// changed map (its type, key and value sizes are not the pinned map's) is
// refused. A changed map whose old layout is not known (no layout pinned,
// or one without the map's shapes), whose type changed, or that holds
// another number of entries than the pool's (another pool's) is left as
// it is: the load then fails on it (ErrIncompatible). Every changed map
// is checked before any is copied, and nothing is replaced unless every
// one could be converted.
func migrate(spec *ebpf.CollectionSpec, dir string) ([]string, error) {
	old, err := readLayout(dir)
	if err != nil || old == nil {
		return nil, err
	}
	now := layoutOf(spec)
	type swap struct {
		name     string
		old, new *ebpf.Map
	}
	var swaps []swap
	defer func() {
		for _, s := range swaps {
			s.old.Close()
			s.new.Close()
		}
	}()
	for _, name := range slices.Sorted(maps.Keys(now)) {
		was, ok := old[name]
		pinned, err := ebpf.LoadPinnedMap(filepath.Join(dir, name), nil)
		if errors.Is(err, os.ErrNotExist) {
			continue // a new map: the load creates it
		}
		if err != nil {
			return nil, fmt.Errorf("open pinned map %s: %w", name, err)
		}
		ms := spec.Maps[name]
		if !ok || reflect.DeepEqual(was, now[name]) {
			pinned.Close()
			continue // the same layout (or unknown): the load reuses it, or reports what differs
		}
		if err := was.checkPinned(pinned); err != nil {
			pinned.Close()
			return nil, fmt.Errorf("map %s: %w", name, err)
		}
		if was.Key == nil || was.Value == nil || now[name].Key == nil || now[name].Value == nil ||
			pinned.Type() != ms.Type || pinned.MaxEntries() != ms.MaxEntries {
			pinned.Close()
			return nil, nil // not ours to convert: the load reports it
		}
		swaps = append(swaps, swap{name: name, old: pinned})
		if err := convertible(now[name].Key, was.Key); err != nil {
			return nil, fmt.Errorf("migrate map %s: key: %w", name, err)
		}
		if err := convertible(now[name].Value, was.Value); err != nil {
			return nil, fmt.Errorf("migrate map %s: value: %w", name, err)
		}
	}
	for i := range swaps {
		s := &swaps[i]
		fresh := spec.Maps[s.name].Copy()
		fresh.Pinning = ebpf.PinNone
		if s.new, err = ebpf.NewMap(fresh); err != nil {
			return nil, fmt.Errorf("new map %s: %w", s.name, err)
		}
		if err := copyEntries(s.old, s.new, old[s.name], now[s.name]); err != nil {
			return nil, fmt.Errorf("migrate map %s: %w", s.name, err)
		}
	}
	// Each converted map takes its old one's pin in one rename, and the
	// layout is written as each is: whatever happens next (a crash, a
	// failed load), the pins and the layout agree, and the next start
	// converts only what is left. The attached programs keep the old maps
	// until they are swapped.
	var done []string
	for _, s := range swaps {
		if err := pinOver(s.new, filepath.Join(dir, s.name)); err != nil {
			return done, fmt.Errorf("migrated map %s: %w", s.name, err)
		}
		old[s.name] = now[s.name]
		done = append(done, s.name)
		if err := writeLayout(dir, old); err != nil {
			return done, err
		}
	}
	return done, nil
}

// checkPinned reports how l does not describe m, the map pinned under its
// name: a map of another type, or of other key or value sizes, than the
// kernel's.
func (l mapLayout) checkPinned(m *ebpf.Map) error {
	if l.Type != m.Type().String() || l.KeySize != m.KeySize() || l.ValueSize != m.ValueSize() {
		return fmt.Errorf("the pinned layout describes a map of type %s with %d-byte keys and %d-byte values; the pinned map is of type %s with %d-byte keys and %d-byte values",
			l.Type, l.KeySize, l.ValueSize, m.Type(), m.KeySize(), m.ValueSize())
	}
	return nil
}

// copyEntries copies every entry of from (layout was) into to (layout
// now), converting keys and values field by field (convertible checked
// both).
func copyEntries(from, to *ebpf.Map, was, now mapLayout) error {
	// Keys of hashes and tries that became one are refused, not merged.
	put := ebpf.UpdateAny
	if to.Type() != ebpf.Array && to.Type() != ebpf.PerCPUArray {
		put = ebpf.UpdateNoExist
	}
	perCPU := from.Type() == ebpf.PerCPUArray || from.Type() == ebpf.PerCPUHash || from.Type() == ebpf.LRUCPUHash
	keyT := reflect.ArrayOf(int(was.KeySize), reflect.TypeFor[byte]())
	oldV := reflect.ArrayOf(int(was.ValueSize), reflect.TypeFor[byte]())
	newV := reflect.ArrayOf(int(now.ValueSize), reflect.TypeFor[byte]())
	valueOf := func(t reflect.Type) reflect.Value {
		if perCPU {
			return reflect.New(reflect.SliceOf(t))
		}
		return reflect.New(t)
	}
	key, val := reflect.New(keyT), valueOf(oldV)
	it := from.Iterate()
	for it.Next(key.Interface(), val.Interface()) {
		k := convert(now.Key, was.Key, key.Elem())
		var v reflect.Value
		if perCPU {
			vals := val.Elem()
			out := reflect.MakeSlice(reflect.SliceOf(newV), vals.Len(), vals.Len())
			for c := range vals.Len() {
				out.Index(c).Set(convert(now.Value, was.Value, vals.Index(c)))
			}
			v = out
		} else {
			v = convert(now.Value, was.Value, val.Elem())
		}
		if err := to.Update(k.Interface(), v.Interface(), put); err != nil {
			return fmt.Errorf("put: %w", err)
		}
	}
	return it.Err()
}

// convertible refuses a conversion that would lose a value silently: a
// field of the same name whose kind or integer size changed.
func convertible(to, from *shape) error {
	switch {
	case to.Kind != from.Kind:
		return fmt.Errorf("a %s became a %s", from.Kind, to.Kind)
	case to.Kind == "int" && to.Size != from.Size:
		return fmt.Errorf("a %d-byte integer became %d bytes", from.Size, to.Size)
	case to.Kind == "array":
		return convertible(to.Elem, from.Elem)
	case to.Kind == "struct":
		for _, tf := range to.Fields {
			for _, ff := range from.Fields {
				if ff.Name == tf.Name && tf.Name != "" {
					if err := convertible(tf.Shape, ff.Shape); err != nil {
						return fmt.Errorf("%s: %w", tf.Name, err)
					}
				}
			}
		}
	}
	return nil
}

// convert returns src (a [N]byte of shape from) as a [M]byte of shape to.
func convert(to, from *shape, src reflect.Value) reflect.Value {
	in := make([]byte, src.Len())
	reflect.Copy(reflect.ValueOf(in), src)
	out := make([]byte, to.Size)
	convertInto(out, to, in, from)
	dst := reflect.New(reflect.ArrayOf(int(to.Size), reflect.TypeFor[byte]())).Elem()
	reflect.Copy(dst, reflect.ValueOf(out))
	return dst
}

// convertInto writes src (shape from) into dst (shape to): ints of one
// size are copied, structs field by field by name, arrays element by
// element; what has no counterpart stays zero.
func convertInto(dst []byte, to *shape, src []byte, from *shape) {
	switch {
	case to.Kind == "int" && from.Kind == "int" && to.Size == from.Size:
		copy(dst[:to.Size], src[:from.Size])
	case to.Kind == "struct" && from.Kind == "struct":
		for _, tf := range to.Fields {
			for _, ff := range from.Fields {
				if ff.Name == tf.Name && tf.Name != "" {
					convertInto(dst[tf.Off:tf.Off+tf.Shape.Size], tf.Shape, src[ff.Off:ff.Off+ff.Shape.Size], ff.Shape)
					break
				}
			}
		}
	case to.Kind == "array" && from.Kind == "array":
		for i := range min(to.Len, from.Len) {
			ts, fs := to.Elem.Size, from.Elem.Size
			convertInto(dst[i*ts:(i+1)*ts], to.Elem, src[i*fs:(i+1)*fs], from.Elem)
		}
	}
}

// PinnedMapID is the kernel's ID of the map pinned as name in dir: the
// same ID is the same map (a start that refused a layout kept it).
func PinnedMapID(dir, name string) (ebpf.MapID, error) {
	m, err := ebpf.LoadPinnedMap(filepath.Join(dir, name), nil)
	if err != nil {
		return 0, err
	}
	defer m.Close()
	info, err := m.Info()
	if err != nil {
		return 0, err
	}
	id, _ := info.ID()
	return id, nil
}

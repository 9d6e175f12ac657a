package rendezvous

// fifo is a first-in, first-out queue per key that keeps no state for keys
// without entries. It is not safe for concurrent use; the Hub guards it.
type fifo[T comparable] struct {
	queues map[string][]T
	n      int
}

func newFIFO[T comparable]() fifo[T] {
	return fifo[T]{queues: map[string][]T{}}
}

// push appends v to the queue of key.
func (f *fifo[T]) push(key string, v T) {
	f.queues[key] = append(f.queues[key], v)
	f.n++
}

// pushFront puts v at the head of the queue of key.
func (f *fifo[T]) pushFront(key string, v T) {
	f.queues[key] = append([]T{v}, f.queues[key]...)
	f.n++
}

// pop removes and returns the oldest entry of key for which live holds,
// dropping the dead ones before it.
func (f *fifo[T]) pop(key string, live func(T) bool) (T, bool) {
	queue := f.queues[key]
	var zero T
	for len(queue) > 0 {
		v := queue[0]
		queue[0] = zero
		queue = queue[1:]
		f.n--
		if live(v) {
			f.set(key, queue)
			return v, true
		}
	}
	f.set(key, queue)
	return zero, false
}

// remove deletes v from the queue of key and reports whether it was there.
func (f *fifo[T]) remove(key string, v T) bool {
	queue := f.queues[key]
	for i, q := range queue {
		if q == v {
			f.set(key, append(queue[:i:i], queue[i+1:]...))
			f.n--
			return true
		}
	}
	return false
}

// len returns the number of entries of all keys.
func (f *fifo[T]) len() int { return f.n }

// each calls fn for every entry of every key.
func (f *fifo[T]) each(fn func(T)) {
	for _, queue := range f.queues {
		for _, v := range queue {
			fn(v)
		}
	}
}

func (f *fifo[T]) set(key string, queue []T) {
	if len(queue) == 0 {
		delete(f.queues, key)
		return
	}
	f.queues[key] = queue
}

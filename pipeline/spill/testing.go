package spill

// GroupedFiles reports, for tests, whether s keeps its partitions in groups
// of files and how many of its writers' files it still holds: a grouped
// spill lets go of a group's files once the group has been consumed.
func (s *Spill) GroupedFiles() (grouped bool, held int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.per > 0, len(s.own)
}

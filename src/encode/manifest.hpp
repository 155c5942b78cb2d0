// What `opendit encode` reads: a manifest (CSV with a header row, or JSON Lines) of files with captions and/or class
// labels, or an ImageNet-style folder whose class subfolders give the labels. Every problem is found up front, with
// the file and line: an unreadable manifest, a malformed line, a row without a path, a label that is not an integer,
// a path that does not exist.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace opendit::encode {

struct InputItem {
  std::string path;     // absolute, or relative to the working folder (manifest paths: relative to the manifest)
  std::string caption;  // "" when the manifest has no captions
  int64_t label = -1;   // -1 when there are no labels
  int64_t line = 0;     // where it came from (manifest line, 1-based; 0 for folder scans)
};

struct InputList {
  std::string origin;                    // the manifest or folder
  std::vector<InputItem> items;          // in manifest order / sorted folder order
  bool has_captions = false, has_labels = false;
  std::vector<std::string> class_names;  // folder scans: label k is class_names[k]
  int64_t skipped_files = 0;             // folder scans: files that are not .jpg/.jpeg/.png
};

// NAME.csv: a header naming the columns (path, and caption and/or label, any order; other columns ignored), fields
// quoted as RFC 4180 (commas, quotes and line breaks inside quotes). NAME.jsonl: one JSON object per line with
// "path" and "caption" and/or "label"; blank lines skipped. Throws opendit::Error "FILE:LINE: what".
InputList read_manifest(const std::string& path);

// The ImageNet layout (torchvision's ImageFolder order): class subfolders sorted by name -> labels 0, 1, ...; within
// a class, every .jpg/.jpeg/.png below it (case-insensitive), folders and names sorted.
InputList scan_image_folder(const std::string& root);

}  // namespace opendit::encode

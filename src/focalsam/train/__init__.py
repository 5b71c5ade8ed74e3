"""focalsam.train"""
